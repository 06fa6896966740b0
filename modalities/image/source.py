"""Pretraining examples for images: one augmented view (shared by teacher and student) and its patch mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from modalities.image.adapter import ImageAdapterConfig
from modalities.image.data import ImageDataConfig, build_image_dataset, eval_transform, pretrain_transform
from modalities.image.masking import ImageMaskConfig, MaskGenerator, build_mask_generator
from modalities.image.views import build_multi_view_source


class ImagePretrainSource:
    """``example(i, rng)`` -> {"inputs": (C, S, S) float, "mask": (N,) | (R, N) bool, "skipped": int}; crops/flips use
    torch's RNG, which the caller seeds per sample, and the mask uses ``rng``. ``skipped`` counts unreadable files
    that were passed over to produce this example (the loop sums it into the run's metrics)."""

    def __init__(self, dataset: Dataset, mask_generator: MaskGenerator, num_masks: int = 1) -> None:
        self.dataset = dataset
        self.mask_generator = mask_generator
        self.num_masks = num_masks

    def __len__(self) -> int:
        return len(self.dataset)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        before = getattr(self.dataset, "num_skipped", 0)
        image, _ = self.dataset[index]
        if self.num_masks == 1:
            mask = torch.from_numpy(self.mask_generator(rng))  # (N,) bool
        else:
            mask = torch.from_numpy(np.stack([self.mask_generator(rng) for _ in range(self.num_masks)]))  # (R, N)
        return {"inputs": image, "mask": mask, "skipped": getattr(self.dataset, "num_skipped", 0) - before}


def check_consistency(data: ImageDataConfig, adapter: ImageAdapterConfig) -> None:
    if data.image_size != adapter.image_size:
        raise ValueError(f"data.image_size={data.image_size} differs from adapter.image_size={adapter.image_size}")
    if data.channels != adapter.in_chans:
        raise ValueError(f"data.channels={data.channels} differs from adapter.in_chans={adapter.in_chans}")


def build_pretrain_source(data: ImageDataConfig, masking: ImageMaskConfig, adapter: ImageAdapterConfig):
    check_consistency(data, adapter)
    if data.views.enabled:  # global views + local crops with per-view masks (iBOT)
        return build_multi_view_source(data, masking, adapter)
    dataset = build_image_dataset(data, transform=pretrain_transform(data))
    generator = build_mask_generator(masking, adapter.grid, patch_size=adapter.patch_size,
                                     image_size=adapter.image_size)
    return ImagePretrainSource(dataset, generator, masking.num_masks)


def build_eval_sets(data: ImageDataConfig, adapter: ImageAdapterConfig) -> tuple[Dataset, Dataset]:
    """(train, test) sets of (image tensor, label) with the deterministic eval transform, for probes."""
    check_consistency(data, adapter)
    splits = {"fashion_mnist": ("train", "test"), "synthetic": ("train", "test"), "folder": ("train", "val")}
    train_split, test_split = splits[data.source]
    transform = eval_transform(data)
    return (build_image_dataset(data, split=train_split, transform=transform),
            build_image_dataset(data, split=test_split, transform=transform))
