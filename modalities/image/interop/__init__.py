"""Weights in and out: converters between unimim image encoders and Hugging Face / timm models."""
