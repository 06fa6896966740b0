"""Patch-grid mask generators for images.

Every generator makes the mask of one image on a patch grid of ``H x W`` patches and is meant to run
per sample inside DataLoader workers. All randomness comes from the ``numpy.random.Generator`` passed
to ``__call__`` (never from the global ``random`` / ``np.random`` state), so a mask is a pure function
of the generator's state and can be reproduced from a per-(seed, step, sample) seed.

Output convention (all generators): a numpy ``bool`` array of shape ``(H * W,)``, the grid flattened
row-major (index ``r * W + c``), ``True`` = masked.

Algorithms (specs in ``shared/reference/data2vec.md`` §5 and ``shared/reference/masked-image-modeling.md``
§1.1-1.2):

* ``block``: BEiT block-wise masking (data2vec 1.0 vision), :class:`BlockMaskGenerator`.
* ``random``: MAE per-sample random masking, :class:`RandomMaskGenerator`.
* ``inverse_block``: data2vec 2.0 inverse block masking, :class:`InverseBlockMaskGenerator`.
* ``simmim``: SimMIM coarse-grid random masking, :class:`SimMIMMaskGenerator`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from unimim.core.masking import MaskGenerator

logger = logging.getLogger(__name__)

__all__ = [
    "BlockMaskGenerator",
    "ImageMaskConfig",
    "InverseBlockMaskGenerator",
    "MaskGenerator",
    "RandomMaskGenerator",
    "SimMIMMaskGenerator",
    "build_mask_generator",
]

MaskKind = Literal["block", "random", "inverse_block", "simmim"]


@dataclass
class ImageMaskConfig:
    """Which image mask to draw and its hyper-parameters.

    Attributes:
        kind: ``"block"`` (BEiT), ``"random"`` (MAE), ``"inverse_block"`` (data2vec 2.0) or ``"simmim"``.
        ratio: fraction of patches to mask. ``block``: target count ``round(ratio * H * W)`` (data2vec
            ViT-B uses 120/196); ``random``: ``H*W - int(H*W * (1 - ratio))`` masked; ``inverse_block``:
            the ``mask_prob`` (``H*W - int(H*W * (1 - ratio))`` masked); ``simmim``:
            ``ceil(ratio * cells)`` coarse cells masked.
        min_block: ``block``: minimum patches per block (BEiT default 16); clipped to ``(H-1)*(W-1)``,
            the largest block that fits the grid.
        max_block: ``block``: maximum patches per block (``None`` = whole grid).
        min_aspect: ``block``: block aspect ratio drawn log-uniformly from ``[min_aspect, 1/min_aspect]``.
        block_size: ``inverse_block``: side of the square visible blocks (data2vec 2.0: 3).
        adjust: ``inverse_block``: ``mask_prob_adjust``, extra block centres (data2vec 2.0 base: 0.07).
        mask_patch_size: ``simmim``: side of the coarse mask unit in pixels (needs ``image_size`` and
            ``patch_size`` in :func:`build_mask_generator`).
        num_masks: masks drawn per image (data2vec 2.0 multi-mask: 16 for images); >1 gives (R, N) masks.
    """

    kind: MaskKind = "block"
    ratio: float = 0.6
    min_block: int = 16
    max_block: int | None = None
    min_aspect: float = 0.3
    block_size: int = 3
    adjust: float = 0.07
    mask_patch_size: int = 32
    num_masks: int = 1

    def __post_init__(self) -> None:
        if self.num_masks < 1:
            raise ValueError(f"masking.num_masks must be >= 1, got {self.num_masks}")


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """Validate a ``(H, W)`` patch grid and return it as a tuple of ints."""
    if len(grid) != 2:
        raise ValueError(f"grid must be (H, W), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1 or h != grid[0] or w != grid[1]:
        raise ValueError(f"grid must be two positive integers (H, W), got {grid!r}")
    return h, w


def _check_ratio(name: str, value: float) -> float:
    """Validate a fraction in ``[0, 1]``."""
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


class _GridGenerator:
    """Shared grid bookkeeping of the generators (not part of the public API)."""

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid: tuple[int, int] = _check_grid(grid)

    @property
    def num_patches(self) -> int:
        """Number of patches ``H * W``."""
        return self.grid[0] * self.grid[1]

    def _check_call(self, num_tokens: int | None, maskable: np.ndarray | None) -> None:
        if num_tokens is not None and num_tokens != self.num_patches:
            raise ValueError(f"{type(self).__name__} masks a {self.grid} grid of {self.num_patches} patches, "
                             f"asked for {num_tokens}")
        if maskable is not None:
            raise ValueError("image masks cover every patch; maskable must be None")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class BlockMaskGenerator(_GridGenerator):
    """BEiT block-wise masking (data2vec 1.0 vision).

    BEiT, Bao et al. 2021 §2.2 (Algorithm 1); ref data2vec_vision ``beit/masking_generator.py::MaskingGenerator``
    @af9a3634, spec in ``data2vec.md`` §5.2. Rectangles of ``area ~ U(min_block, budget)`` patches and
    log-uniform aspect ratio are placed until ``num_masked`` patches are masked. Each outer iteration makes
    up to 10 placement attempts and stops at the first one that adds patches; a placement is accepted only
    if it adds between 1 and ``budget`` new patches, so the count never exceeds ``num_masked``. When an outer
    iteration adds nothing the loop gives up, so a mask can end with fewer than ``num_masked`` patches
    (about 119.5 of 120 on average on 14x14).

    Args:
        grid: patch grid ``(H, W)``, both at least 2 (a block must satisfy ``h < H`` and ``w < W``).
        num_masked: target number of masked patches, ``0 <= num_masked <= H*W``.
        min_block: minimum patches per block (>= 1); clipped to ``(H-1)*(W-1)``, the largest block that fits.
        max_block: maximum patches per block (``None`` = ``H*W``).
        min_aspect: aspect ratios are drawn log-uniformly from ``[min_aspect, 1/min_aspect]``, ``0 < min_aspect <= 1``.

    Output of ``__call__``: bool ``(H*W,)``, ``True`` = masked.
    """

    max_attempts: int = 10

    def __init__(
        self,
        grid: tuple[int, int],
        num_masked: int,
        min_block: int = 16,
        max_block: int | None = None,
        min_aspect: float = 0.3,
    ) -> None:
        super().__init__(grid)
        h, w = self.grid
        n = h * w
        if h < 2 or w < 2:
            raise ValueError(f"block masking needs a grid of at least 2x2 (blocks satisfy h < H, w < W), got {grid}")
        if not (0 <= num_masked <= n):
            raise ValueError(f"num_masked must be in [0, H*W={n}] for grid {self.grid}, got {num_masked}")
        if min_block < 1:
            raise ValueError(f"min_block must be >= 1, got {min_block}")
        max_block = n if max_block is None else max_block
        if max_block < 1:
            raise ValueError(f"max_block must be >= 1 (or None for the whole grid), got {max_block}")
        if max_block < min_block:
            raise ValueError(f"max_block ({max_block}) must be >= min_block ({min_block})")
        if not (0.0 < min_aspect <= 1.0):
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        largest = (h - 1) * (w - 1)
        if min_block > largest:
            logger.warning(
                "block masking: min_block=%d exceeds the largest block that fits a %dx%d grid (%d); clipping",
                min_block,
                h,
                w,
                largest,
            )
            min_block = largest
        self.num_masked = int(num_masked)
        self.min_block = int(min_block)
        self.max_block = int(max_block)
        self.min_aspect = float(min_aspect)
        self._log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))

    def _place_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Up to ``max_attempts`` tries to place one rectangle into ``mask`` (H, W) in place; returns patches added."""
        height, width = mask.shape
        added = 0
        for _ in range(self.max_attempts):
            # uniform(a, b) = a + (b - a) * u also for a > b (budget < min_block near the end), as in the reference
            area = self.min_block + (budget - self.min_block) * rng.random()
            aspect = math.exp(self._log_aspect[0] + (self._log_aspect[1] - self._log_aspect[0]) * rng.random())
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if w < width and h < height:
                top = int(rng.integers(0, height - h, endpoint=True))
                left = int(rng.integers(0, width - w, endpoint=True))
                window = mask[top : top + h, left : left + w]  # (h, w) view
                new = h * w - int(window.sum())
                if 0 < new <= budget:
                    window[...] = True
                    added += new
            if added > 0:
                break
        return added

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray:
        """Draw one mask. Returns bool ``(H*W,)``, row-major, ``True`` = masked (the ``MaskGenerator`` protocol)."""
        self._check_call(num_tokens, maskable)
        mask = np.zeros(self.grid, dtype=bool)  # (H, W)
        count = 0
        while count < self.num_masked:
            budget = min(self.num_masked - count, self.max_block)
            added = self._place_block(mask, budget, rng)
            if added == 0:
                break
            count += added
        return mask.reshape(-1)  # (H*W,)


class RandomMaskGenerator(_GridGenerator):
    """MAE per-sample random masking.

    MAE, He et al. 2021 §3; ref facebookresearch/mae ``models_mae.py::random_masking``, spec in
    ``masked-image-modeling.md`` §1.1. Keeps the ``len_keep = int(N * (1 - ratio))`` patches with the
    smallest uniform noise, so exactly ``N - len_keep`` patches are masked (147 of 196 at ratio 0.75),
    uniformly over positions.

    Args:
        grid: patch grid ``(H, W)``.
        ratio: mask ratio in ``[0, 1]``.

    Output of ``__call__``: bool ``(H*W,)``, ``True`` = masked.
    """

    def __init__(self, grid: tuple[int, int], ratio: float = 0.75) -> None:
        super().__init__(grid)
        self.ratio = _check_ratio("ratio", ratio)
        self.num_keep = int(self.num_patches * (1 - self.ratio))

    @property
    def num_masked(self) -> int:
        """Exact number of masked patches of every mask."""
        return self.num_patches - self.num_keep

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray:
        """Draw one mask. Returns bool ``(H*W,)``, row-major, ``True`` = masked (the ``MaskGenerator`` protocol)."""
        self._check_call(num_tokens, maskable)
        noise = rng.random(self.num_patches)  # (N,)
        order = np.argsort(noise, kind="stable")  # (N,) small noise = keep
        mask = np.ones(self.num_patches, dtype=bool)
        mask[order[: self.num_keep]] = False
        return mask


class InverseBlockMaskGenerator(_GridGenerator):
    """data2vec 2.0 inverse block masking: a few square blocks stay visible, the rest is masked.

    data2vec 2.0, Baevski et al. 2022 §3.2 ("inverse block masking"); ref fairseq
    ``data/data_utils.py::compute_block_mask_2d`` (``inverse_mask=True``, ``require_same_masks=True``,
    ``non_overlapping=False``, ``mask_dropout=0``), spec in ``data2vec.md`` §5.3, for one row:

    1. ``p = 1 - mask_prob`` (fraction to keep visible).
    2. ``n_c = int(N * (p + adjust) / block_size**2)`` block centres, uniform with replacement.
    3. Each centre sets the ``block_size x block_size`` cells around it (offsets
       ``-(b//2) .. b-1-(b//2)``), clamped to the grid; overlaps merge.
    4. Fix the count to ``target = int(N * p)``: unset random set cells, or set random unset cells.
    5. Invert: exactly ``N - target`` masked (157/196 for mask_prob 0.8, adjust 0.07, block 3).

    The reference assumes a square grid; rectangular grids clamp each axis separately.

    Args:
        grid: patch grid ``(H, W)``.
        mask_prob: fraction to mask in ``[0, 1]``.
        adjust: ``mask_prob_adjust`` >= 0, extra centres to compensate for block overlap.
        block_size: side ``b`` >= 1 of the visible blocks.

    Output of ``__call__``: bool ``(H*W,)``, ``True`` = masked.
    """

    def __init__(
        self, grid: tuple[int, int], mask_prob: float = 0.8, adjust: float = 0.07, block_size: int = 3
    ) -> None:
        super().__init__(grid)
        self.mask_prob = _check_ratio("mask_prob", mask_prob)
        if adjust < 0:
            raise ValueError(f"adjust (mask_prob_adjust) must be >= 0, got {adjust}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.adjust = float(adjust)
        self.block_size = int(block_size)
        keep = 1 - self.mask_prob
        n = self.num_patches
        self.num_centres = int(n * (keep + self.adjust) / self.block_size**2)
        self.num_visible = int(n * keep)
        lo = -(self.block_size // 2)
        self._offsets = np.arange(lo, lo + self.block_size)  # (b,)

    @property
    def num_masked(self) -> int:
        """Exact number of masked patches of every mask."""
        return self.num_patches - self.num_visible

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray:
        """Draw one mask. Returns bool ``(H*W,)``, row-major, ``True`` = masked (the ``MaskGenerator`` protocol)."""
        self._check_call(num_tokens, maskable)
        height, width = self.grid
        n = self.num_patches
        keep = np.zeros(self.grid, dtype=bool)  # (H, W), True = visible
        centres = rng.integers(0, n, size=self.num_centres)  # (n_c,) with replacement
        rows = np.clip(centres[:, None] // width + self._offsets[None, :], 0, height - 1)  # (n_c, b)
        cols = np.clip(centres[:, None] % width + self._offsets[None, :], 0, width - 1)  # (n_c, b)
        keep[rows[:, :, None], cols[:, None, :]] = True  # (n_c, b, b) cells
        keep = keep.reshape(-1)  # (N,)
        count = int(keep.sum())
        if count > self.num_visible:
            on = np.flatnonzero(keep)
            keep[rng.choice(on, count - self.num_visible, replace=False)] = False
        elif count < self.num_visible:
            off = np.flatnonzero(~keep)
            keep[rng.choice(off, self.num_visible - count, replace=False)] = True
        return ~keep  # (N,) True = masked


class SimMIMMaskGenerator(_GridGenerator):
    """SimMIM random masking on a coarse grid of ``mask_patch_size`` pixels, up-sampled to the patch grid.

    SimMIM, Xie et al. 2021 §3.1; ref microsoft/SimMIM ``data/data_simmim.py::MaskGenerator`` @d3e29bca, spec in
    ``masked-image-modeling.md`` §1.2. The coarse grid has ``R = image_size // mask_patch_size`` cells per
    side; exactly ``ceil(R**2 * ratio)`` cells are masked (22/36 at 192 px, 30/49 at 224 px, ratio 0.6), and
    each cell covers ``s x s`` patches, ``s = mask_patch_size // patch_size``. The rounding is the reference's
    float ``ceil``, so e.g. ``ratio * cells`` that lands a hair above an integer rounds up one more.

    Args:
        image_size: input side in pixels, divisible by ``mask_patch_size``.
        patch_size: model patch side in pixels, dividing ``mask_patch_size``.
        mask_patch_size: coarse mask unit in pixels.
        ratio: mask ratio in ``[0, 1]``.

    Output of ``__call__``: bool ``(P*P,)`` with ``P = image_size // patch_size``, ``True`` = masked.
    """

    def __init__(self, image_size: int, patch_size: int, mask_patch_size: int = 32, ratio: float = 0.6) -> None:
        if image_size < 1 or patch_size < 1 or mask_patch_size < 1:
            raise ValueError(
                f"image_size, patch_size and mask_patch_size must be positive, got "
                f"{image_size}, {patch_size}, {mask_patch_size}"
            )
        if image_size % mask_patch_size != 0:
            raise ValueError(f"image_size ({image_size}) must be divisible by mask_patch_size ({mask_patch_size})")
        if mask_patch_size % patch_size != 0:
            raise ValueError(f"mask_patch_size ({mask_patch_size}) must be divisible by patch_size ({patch_size})")
        side = image_size // patch_size
        super().__init__((side, side))
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.mask_patch_size = int(mask_patch_size)
        self.ratio = _check_ratio("ratio", ratio)
        self.coarse_side = image_size // mask_patch_size
        self.scale = mask_patch_size // patch_size
        self.num_cells_masked = math.ceil(self.coarse_side**2 * self.ratio)

    @property
    def num_masked(self) -> int:
        """Exact number of masked patches of every mask."""
        return self.num_cells_masked * self.scale**2

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray:
        """Draw one mask. Returns bool ``(P*P,)``, row-major, ``True`` = masked (the ``MaskGenerator`` protocol)."""
        self._check_call(num_tokens, maskable)
        cells = self.coarse_side**2
        coarse = np.zeros(cells, dtype=bool)  # (R*R,)
        coarse[rng.permutation(cells)[: self.num_cells_masked]] = True
        coarse = coarse.reshape(self.coarse_side, self.coarse_side)  # (R, R)
        fine = coarse.repeat(self.scale, axis=0).repeat(self.scale, axis=1)  # (P, P)
        return fine.reshape(-1)  # (P*P,)


def build_mask_generator(
    cfg: ImageMaskConfig, grid: tuple[int, int], *, patch_size: int = 16, image_size: int | None = None
) -> MaskGenerator:
    """Build the mask generator ``cfg`` describes for a patch grid.

    Args:
        cfg: the mask config.
        grid: patch grid ``(H, W)`` of the model.
        patch_size: model patch side in pixels (``simmim`` only).
        image_size: input side in pixels (``simmim`` only, required there; must give ``grid``).

    Returns:
        a :class:`MaskGenerator` whose ``__call__(rng)`` returns bool ``(H*W,)``, ``True`` = masked.
    """
    grid = _check_grid(grid)
    if cfg.kind == "block":
        ratio = _check_ratio("ratio", cfg.ratio)
        num_masked = round(ratio * grid[0] * grid[1])
        return BlockMaskGenerator(grid, num_masked, cfg.min_block, cfg.max_block, cfg.min_aspect)
    if cfg.kind == "random":
        return RandomMaskGenerator(grid, cfg.ratio)
    if cfg.kind == "inverse_block":
        return InverseBlockMaskGenerator(grid, cfg.ratio, cfg.adjust, cfg.block_size)
    if cfg.kind == "simmim":
        if image_size is None:
            raise ValueError("simmim masking needs image_size (and patch_size)")
        gen = SimMIMMaskGenerator(image_size, patch_size, cfg.mask_patch_size, cfg.ratio)
        if gen.grid != grid:
            raise ValueError(
                f"simmim: image_size {image_size} / patch_size {patch_size} gives grid {gen.grid}, but grid is {grid}"
            )
        return gen
    raise ValueError(f"unknown image mask kind {cfg.kind!r}; expected block, random, inverse_block or simmim")
