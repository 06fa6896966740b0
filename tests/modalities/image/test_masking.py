"""Tests of the image patch-mask generators against the statistics of data2vec.md §5 and the MIM study."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modalities.image.masking import (
    BlockMaskGenerator,
    ImageMaskConfig,
    InverseBlockMaskGenerator,
    MaskGenerator,
    RandomMaskGenerator,
    SimMIMMaskGenerator,
    build_mask_generator,
)


def _draw(gen: MaskGenerator, n: int, seed: int) -> np.ndarray:
    """Draw ``n`` masks from one seeded rng -> bool (n, N)."""
    rng = np.random.default_rng(seed)
    return np.stack([gen(rng) for _ in range(n)])


def _check_mask(mask: np.ndarray, gen: MaskGenerator) -> None:
    assert mask.dtype == np.bool_
    assert mask.shape == (gen.num_patches,)


# --------------------------------------------------------------------------- block (BEiT, data2vec 1.0)


def test_block_matches_reference_statistics() -> None:
    """data2vec.md §5.2 table: reference 119.5 ± 0.97 masked of 120 target (min 109) on 14x14."""
    gen = BlockMaskGenerator((14, 14), num_masked=120, min_block=16, max_block=196, min_aspect=0.3)
    _check_mask(gen(np.random.default_rng(0)), gen)
    counts = _draw(gen, 2000, seed=0).sum(axis=1)
    assert abs(counts.mean() - 119.5) < 0.5
    assert 0.5 < counts.std() < 1.5
    assert counts.max() <= 120
    assert counts.min() >= 100


def test_block_masks_are_blocky() -> None:
    """Masked patches come in blocks: most masked patches have a masked 4-neighbour."""
    gen = BlockMaskGenerator((14, 14), num_masked=120)
    masks = _draw(gen, 200, seed=1).reshape(-1, 14, 14)
    nb = np.zeros_like(masks)
    nb[:, 1:] |= masks[:, :-1]
    nb[:, :-1] |= masks[:, 1:]
    nb[:, :, 1:] |= masks[:, :, :-1]
    nb[:, :, :-1] |= masks[:, :, 1:]
    assert (masks & nb).sum() / masks.sum() > 0.95


def test_block_small_grid_7x7() -> None:
    """Fashion-MNIST 28 px / patch 4: ratio 0.6 -> round(29.4) = 29 target, min_block 16 still works."""
    gen = build_mask_generator(ImageMaskConfig(kind="block", ratio=0.6), (7, 7))
    assert isinstance(gen, BlockMaskGenerator)
    assert gen.num_masked == 29 and gen.num_patches == 49
    counts = _draw(gen, 2000, seed=2).sum(axis=1)
    assert counts.max() <= 29
    assert abs(counts.mean() - 29) < 1.0


def test_block_min_block_clipped_to_grid(caplog: pytest.LogCaptureFixture) -> None:
    """On a 4x4 grid the largest block that fits (h < H, w < W) is 3x3 = 9 patches."""
    with caplog.at_level("WARNING"):
        gen = BlockMaskGenerator((4, 4), num_masked=8, min_block=16)
    assert gen.min_block == 9
    assert "clipping" in caplog.text
    counts = _draw(gen, 200, seed=3).sum(axis=1)
    assert counts.max() <= 8 and counts.mean() > 0


def test_block_zero_target() -> None:
    gen = BlockMaskGenerator((14, 14), num_masked=0)
    assert not gen(np.random.default_rng(0)).any()


# --------------------------------------------------------------------------- random (MAE)


def test_random_exact_count_and_no_positional_bias() -> None:
    gen = RandomMaskGenerator((14, 14), ratio=0.75)
    assert gen.num_masked == 147
    masks = _draw(gen, 4000, seed=4)
    assert masks.dtype == np.bool_ and masks.shape == (4000, 196)
    assert (masks.sum(axis=1) == 147).all()
    freq = masks.mean(axis=0)  # (196,)  std of each entry ~ sqrt(.75*.25/4000) = 0.0068
    assert np.abs(freq - 0.75).max() < 0.035


def test_random_len_keep_convention() -> None:
    """masked = N - int(N * (1 - ratio)): 49 patches at 0.6 keep int(19.6) = 19 -> 30 masked."""
    gen = RandomMaskGenerator((7, 7), ratio=0.6)
    assert gen.num_masked == 30
    assert gen(np.random.default_rng(0)).sum() == 30


# --------------------------------------------------------------------------- inverse block (data2vec 2.0)


def _visible_with_visible_neighbour(masks: np.ndarray, h: int, w: int) -> float:
    vis = ~masks.reshape(-1, h, w)
    nb = np.zeros_like(vis)
    nb[:, 1:] |= vis[:, :-1]
    nb[:, :-1] |= vis[:, 1:]
    nb[:, :, 1:] |= vis[:, :, :-1]
    nb[:, :, :-1] |= vis[:, :, 1:]
    return float((vis & nb).sum() / vis.sum())


def test_inverse_block_matches_reference_statistics() -> None:
    """data2vec.md §5.3 table: base (0.8, +0.07, 3) -> exactly 157/196 masked; visible-neighbour fraction 0.953."""
    gen = InverseBlockMaskGenerator((14, 14), mask_prob=0.8, adjust=0.07, block_size=3)
    assert gen.num_centres == 5 and gen.num_visible == 39 and gen.num_masked == 157
    masks = _draw(gen, 1000, seed=5)
    _check_mask(masks[0], gen)
    assert (masks.sum(axis=1) == 157).all()
    assert 0.93 <= _visible_with_visible_neighbour(masks, 14, 14) <= 0.98


def test_inverse_block_large_setting() -> None:
    """Large (0.75, +0.1, 3): 7 centres, exactly 147 masked (data2vec.md §5.3)."""
    gen = build_mask_generator(ImageMaskConfig(kind="inverse_block", ratio=0.75, adjust=0.1, block_size=3), (14, 14))
    assert isinstance(gen, InverseBlockMaskGenerator) and gen.num_centres == 7
    assert (_draw(gen, 100, seed=6).sum(axis=1) == 147).all()


def test_inverse_block_rectangular_grid_and_no_centres() -> None:
    gen = InverseBlockMaskGenerator((6, 10), mask_prob=0.5, adjust=0.0, block_size=3)
    assert (_draw(gen, 50, seed=7).sum(axis=1) == 60 - 30).all()
    # tiny grid: int(9 * 0.2 / 9) = 0 centres -> the visible cells are random singletons
    tiny = InverseBlockMaskGenerator((3, 3), mask_prob=0.8, adjust=0.0, block_size=3)
    assert tiny.num_centres == 0
    assert (_draw(tiny, 20, seed=8).sum(axis=1) == 9 - 1).all()


# --------------------------------------------------------------------------- SimMIM


@pytest.mark.parametrize(
    ("image_size", "patch_size", "cells_masked"),
    [(192, 4, 22), (224, 16, 30)],  # ceil(36 * 0.6) = 22 (Swin), ceil(49 * 0.6) = 30 (ViT)
)
def test_simmim_exact_count_and_uniform_units(image_size: int, patch_size: int, cells_masked: int) -> None:
    gen = build_mask_generator(
        ImageMaskConfig(kind="simmim", ratio=0.6, mask_patch_size=32),
        (image_size // patch_size,) * 2,
        patch_size=patch_size,
        image_size=image_size,
    )
    assert isinstance(gen, SimMIMMaskGenerator)
    scale = 32 // patch_size
    side = image_size // patch_size
    rand = image_size // 32
    assert gen.num_cells_masked == cells_masked == math.ceil(rand * rand * 0.6)
    masks = _draw(gen, 300, seed=9)
    assert masks.shape == (300, side * side)
    assert (masks.sum(axis=1) == cells_masked * scale * scale).all()
    units = masks.reshape(300, rand, scale, rand, scale)  # (n, R, s, R, s)
    assert (units.all(axis=(2, 4)) == units.any(axis=(2, 4))).all()  # each s x s group all-or-nothing
    assert np.abs(units[:, :, 0, :, 0].mean(axis=0) - cells_masked / rand**2).max() < 0.15


# --------------------------------------------------------------------------- common


ALL_CONFIGS = [
    (ImageMaskConfig(kind="block", ratio=120 / 196), (14, 14), {}),
    (ImageMaskConfig(kind="random", ratio=0.75), (14, 14), {}),
    (ImageMaskConfig(kind="inverse_block", ratio=0.8), (14, 14), {}),
    (ImageMaskConfig(kind="simmim", ratio=0.6), (14, 14), {"patch_size": 16, "image_size": 224}),
]


@pytest.mark.parametrize(("cfg", "grid", "kw"), ALL_CONFIGS, ids=[c.kind for c, _, _ in ALL_CONFIGS])
def test_determinism(cfg: ImageMaskConfig, grid: tuple[int, int], kw: dict) -> None:
    gen = build_mask_generator(cfg, grid, **kw)
    assert isinstance(gen, MaskGenerator)
    assert gen.num_patches == grid[0] * grid[1]
    a = _draw(gen, 20, seed=123)
    b = _draw(gen, 20, seed=123)
    c = _draw(gen, 20, seed=124)
    assert a.dtype == np.bool_ and a.shape == (20, gen.num_patches)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not all(np.array_equal(a[0], m) for m in a[1:])  # successive draws differ


@pytest.mark.parametrize(("cfg", "grid", "kw"), ALL_CONFIGS, ids=[c.kind for c, _, _ in ALL_CONFIGS])
def test_global_random_state_untouched(cfg: ImageMaskConfig, grid: tuple[int, int], kw: dict) -> None:
    import random

    gen = build_mask_generator(cfg, grid, **kw)
    py_state, np_state = random.getstate(), np.random.get_state()
    _draw(gen, 5, seed=0)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def test_block_target_from_ratio() -> None:
    gen = build_mask_generator(ImageMaskConfig(kind="block", ratio=120 / 196), (14, 14))
    assert isinstance(gen, BlockMaskGenerator) and gen.num_masked == 120 and gen.max_block == 196


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: BlockMaskGenerator((14, 14), num_masked=197), "num_masked"),
        (lambda: BlockMaskGenerator((14, 14), num_masked=-1), "num_masked"),
        (lambda: BlockMaskGenerator((14, 14), num_masked=120, min_block=0), "min_block"),
        (lambda: BlockMaskGenerator((14, 14), num_masked=120, min_block=16, max_block=8), "max_block"),
        (lambda: BlockMaskGenerator((14, 14), num_masked=120, min_aspect=0.0), "min_aspect"),
        (lambda: BlockMaskGenerator((14, 14), num_masked=120, min_aspect=2.0), "min_aspect"),
        (lambda: BlockMaskGenerator((1, 14), num_masked=5), "2x2"),
        (lambda: BlockMaskGenerator((0, 14), num_masked=0), "grid"),
        (lambda: RandomMaskGenerator((14, 14), ratio=1.5), "ratio"),
        (lambda: RandomMaskGenerator((14, 14), ratio=-0.1), "ratio"),
        (lambda: InverseBlockMaskGenerator((14, 14), mask_prob=1.2), "mask_prob"),
        (lambda: InverseBlockMaskGenerator((14, 14), adjust=-0.1), "adjust"),
        (lambda: InverseBlockMaskGenerator((14, 14), block_size=0), "block_size"),
        (lambda: SimMIMMaskGenerator(200, 4, 32, 0.6), "divisible by mask_patch_size"),
        (lambda: SimMIMMaskGenerator(192, 5, 32, 0.6), "divisible by patch_size"),
        (lambda: SimMIMMaskGenerator(192, 4, 32, 1.1), "ratio"),
        (lambda: build_mask_generator(ImageMaskConfig(kind="simmim"), (14, 14)), "image_size"),
        (
            lambda: build_mask_generator(ImageMaskConfig(kind="simmim"), (7, 7), patch_size=16, image_size=224),
            "grid",
        ),
        (lambda: build_mask_generator(ImageMaskConfig(kind="blocks"), (14, 14)), "unknown image mask kind"),  # type: ignore[arg-type]
        (lambda: build_mask_generator(ImageMaskConfig(kind="block", ratio=1.5), (14, 14)), "ratio"),
    ],
)
def test_bad_arguments_raise(factory, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        factory()
