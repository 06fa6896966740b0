"""Visual tokenizers: image -> a grid of discrete codes (BEiT's stage 1)."""
