"""Pretraining examples for images: one augmented view (shared by teacher and student) and its patch mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from modalities.image.data.dataset import ImageDataConfig, build_image_dataset, eval_transform, pretrain_transform
from modalities.image.data.views import MultiViewSource, ViewMasker, ViewsConfig, view_transform
from modalities.image.masking import ImageMaskConfig, build_mask_generator
from modalities.image.model.adapter import ImageAdapterConfig
from unimim.core.batch import Batch
from unimim.core.masking import MaskGenerator, draw_masks


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
        mask = torch.from_numpy(draw_masks(self.mask_generator, rng, self.num_masks))  # (R, N) bool
        return {"inputs": image, "mask": mask, "skipped": getattr(self.dataset, "num_skipped", 0) - before}

    def collate(self, items: list[dict[str, Any]]) -> Batch:
        return collate(items)


def collate(items: list[Any]) -> Any:
    """Pretraining examples (dicts) -> Batch(inputs (B, C, S, S), mask (B, R, N)); probe items ``(image, label)``
    -> (images, labels)."""
    if not isinstance(items[0], dict):
        return default_collate(items)
    return Batch(inputs=torch.stack([it["inputs"] for it in items]),  # (B, C, S, S)
                 mask=torch.stack([it["mask"] for it in items]),  # (B, R, N)
                 skipped=sum(int(it["skipped"]) for it in items))


def build_multi_view_source(data: Any, masking: Any, adapter: Any) -> MultiViewSource:
    """From the image data / mask / adapter configs; the block shape comes from ``masking`` (kind ``block``)."""
    cfg: ViewsConfig = data.views
    if masking.kind != "block":
        raise ValueError(f"multi-view examples use BEiT block masks (masking.kind: block), got {masking.kind!r}")
    if cfg.local_views and cfg.local_size % adapter.patch_size:
        raise ValueError(f"data.views.local_size={cfg.local_size} is not a multiple of the patch size "
                         f"{adapter.patch_size}")
    mean, std = data.channel_stats()
    common = dict(mode=data.mode, hflip=data.hflip, jitter=cfg.color_jitter, mean=mean, std=std)
    global_tf = view_transform(data.image_size, cfg.global_crop_scale, **common)
    local_tf = view_transform(cfg.local_size, cfg.local_crop_scale, **common) if cfg.local_views else None
    masker = ViewMasker(adapter.grid, cfg, min_block=masking.min_block, max_block=masking.max_block,
                        min_aspect=masking.min_aspect)
    return MultiViewSource(build_image_dataset(data), global_tf, local_tf, masker, cfg)


def check_consistency(data: ImageDataConfig, adapter: ImageAdapterConfig) -> None:
    if data.image_size != adapter.image_size:
        raise ValueError(f"data.image_size={data.image_size} differs from adapter.image_size={adapter.image_size}")
    if data.channels != adapter.in_chans:
        raise ValueError(f"data.channels={data.channels} differs from adapter.in_chans={adapter.in_chans}")


def check_experiment(cfg: Any) -> None:
    """The image settings that only fail together, checked when the config loads (the data's image size and
    channels against the adapter's are checked when the data is built: the bare defaults differ)."""
    if cfg.data.views.enabled:
        if cfg.masking.num_masks != 1:
            raise ValueError("with data.views.enabled every global view draws its own mask (ratio from "
                             "data.views.mask_ratio_range): masking.num_masks must be 1, got "
                             f"{cfg.masking.num_masks}")
        if cfg.masking.kind != "block":
            raise ValueError(f"multi-view examples use BEiT block masks (masking.kind: block), got "
                             f"{cfg.masking.kind!r}")


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
