"""Multi-view pretraining examples for self-distillation objectives (iBOT): global views with masks, local crops.

iBOT (Zhou et al. 2022, §3 and App. A) inherits DINO's multi-crop: two global crops (RandomResizedCrop scale
(0.14 | 0.25, 1)), optionally several small local crops (scale (0.05, 0.25), 96 px for a 224-px model), flips and
colour jitter; every global crop is block-masked with probability 0.5, with a ratio drawn uniformly from (0.1, 0.5)
(the reference's ``pred_shape: block``, ``pred_ratio 0.3 +- 0.2``, ``pred_aug_prob`` 0.5); the rest stay unmasked.
Ref: bytedance/ibot ``loader.py::ImageFolderMask`` and ``main_ibot.py::DataAugmentationiBOT``@da316d82
(../shared/reference/masked-image-modeling.md §1.5). Blocks come from the project's BEiT block-mask generator.

An example is ``{"views": (V, C, S, S), "view_mask": (V, N) bool, "local": (L, C, s, s) (if L > 0), "skipped": int}``;
the image collate stacks examples into a :class:`~unimim.core.batch.Batch` with ``views`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import transforms as T

from modalities.image.data.folder import read_sample
from modalities.image.data.modes import ConvertMode
from modalities.image.masking import BlockMaskGenerator
from unimim.core.batch import Batch, Views
from unimim.core.masking import draw_masks


@dataclass
class ViewsConfig:
    enabled: bool = False                              # False: one view per image (data2vec, BEiT, MAE, ...)
    global_views: int = 2
    global_crop_scale: tuple[float, float] = (0.25, 1.0)
    local_views: int = 0                               # iBOT ViT-S/16 recipe: 10
    local_size: int = 96                               # local crop side in pixels (a multiple of the patch size)
    local_crop_scale: tuple[float, float] = (0.05, 0.25)
    color_jitter: float = 0.0                          # brightness/contrast jitter strength, applied with p = 0.8
    mask_prob: float = 0.5                             # chance that a global view is masked at all
    mask_ratio_range: tuple[float, float] = (0.1, 0.5)  # masked fraction ~ U(range) for a masked view

    def __post_init__(self) -> None:
        self.global_crop_scale = tuple(float(v) for v in self.global_crop_scale)  # type: ignore[assignment]
        self.local_crop_scale = tuple(float(v) for v in self.local_crop_scale)  # type: ignore[assignment]
        self.mask_ratio_range = tuple(float(v) for v in self.mask_ratio_range)  # type: ignore[assignment]
        if self.global_views < 1 or self.local_views < 0:
            raise ValueError(f"views: need global_views >= 1 and local_views >= 0, got {self.global_views}, "
                             f"{self.local_views}")
        for name in ("global_crop_scale", "local_crop_scale", "mask_ratio_range"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"views.{name} must be (lo, hi) with 0 <= lo <= hi <= 1, got {(lo, hi)}")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"views.mask_prob must be in [0, 1], got {self.mask_prob}")
        if self.color_jitter < 0:
            raise ValueError(f"views.color_jitter must be >= 0, got {self.color_jitter}")


def view_transform(size: int, scale: tuple[float, float], *, mode: str, hflip: bool, jitter: float,
                   mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """One random view: (PIL image) -> float32 (C, size, size)."""
    ops: list[Any] = [ConvertMode(mode),
                      T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    if jitter > 0:
        ops.append(T.RandomApply([T.ColorJitter(brightness=jitter, contrast=jitter)], p=0.8))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class ViewMasker:
    """Per global view: with probability ``mask_prob`` a BEiT block mask of ``round(U(lo, hi) * N)`` patches,
    else nothing masked. ``__call__(rng) -> (N,) bool``."""

    def __init__(self, grid: tuple[int, int], cfg: ViewsConfig, *, min_block: int, max_block: int | None,
                 min_aspect: float) -> None:
        self.grid, self.cfg = grid, cfg
        self.block = dict(min_block=min_block, max_block=max_block, min_aspect=min_aspect)
        self.num_patches = grid[0] * grid[1]

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray:
        if (num_tokens is not None and num_tokens != self.num_patches) or maskable is not None:
            raise ValueError(f"view masks cover the whole {self.grid} grid ({self.num_patches} patches)")
        if rng.random() >= self.cfg.mask_prob:
            return np.zeros(self.num_patches, dtype=bool)
        lo, hi = self.cfg.mask_ratio_range
        count = round(rng.uniform(lo, hi) * self.num_patches)
        return BlockMaskGenerator(self.grid, count, **self.block)(rng)


class MultiViewSource:
    """``example(i, rng)``: ``V`` masked global views and ``L`` local crops of image ``i`` (see the module doc)."""

    def __init__(self, dataset: Any, global_tf: T.Compose, local_tf: T.Compose | None, masker: ViewMasker,
                 cfg: ViewsConfig) -> None:
        self.dataset, self.global_tf, self.local_tf, self.masker, self.cfg = dataset, global_tf, local_tf, masker, cfg

    def __len__(self) -> int:
        return len(self.dataset)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        image, _, replaced = read_sample(self.dataset, index)
        views = torch.stack([self.global_tf(image) for _ in range(self.cfg.global_views)])  # (V, C, S, S)
        mask = torch.from_numpy(draw_masks(self.masker, rng, self.cfg.global_views))  # (V, N)
        out = {"views": views, "view_mask": mask}
        if self.cfg.local_views:
            out["local"] = torch.stack([self.local_tf(image) for _ in range(self.cfg.local_views)])  # (L, C, s, s)
        out["skipped"] = int(replaced)  # image i was unreadable and replaced (read_sample)
        return out

    def collate(self, items: list[dict[str, Any]]) -> Batch:
        """Examples -> Batch(views=Views(global (B, V, C, S, S), mask (B, V, N), local (B, L, C, s, s) | None))."""
        local = torch.stack([it["local"] for it in items]) if "local" in items[0] else None
        views = Views(global_=torch.stack([it["views"] for it in items]),
                      mask=torch.stack([it["view_mask"] for it in items]), local=local)
        return Batch(inputs=None, views=views, skipped=sum(int(it["skipped"]) for it in items))
