"""Image data: Fashion-MNIST (IDX), image folders, synthetic images, transforms, multi-view crops, pretraining
sources."""
