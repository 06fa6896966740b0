"""Modality adapters: raw input -> tokens, masks and data for each modality."""
