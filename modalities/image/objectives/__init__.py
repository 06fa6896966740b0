"""Image-only pretraining objectives."""
