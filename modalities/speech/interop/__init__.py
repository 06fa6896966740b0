"""Weights in and out: converters between unimim speech encoders and Hugging Face Data2VecAudio."""
