"""Weights in and out: converters between unimim text encoders and Hugging Face Data2VecText."""
