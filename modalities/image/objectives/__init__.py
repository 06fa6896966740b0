"""Image-only pretraining objectives (alternatives to data2vec on the same image adapter and training loop)."""
