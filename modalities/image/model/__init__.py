"""Image model parts: patch-embedding adapter, relative position bias, Swin backbone, MAE decoder, patch helpers."""
