"""Pixel-target helpers against hand-written values."""

import torch

from modalities.image.model.patches import denormalize_patches, normalize_patches, patchify, unpatchify


def test_patchify_order_is_row_col_channel():
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # (B, C, H, W)
    patches = patchify(img, 2)  # (1, 4, 8)
    # patch 1 = rows 0-1, cols 2-3; entries ordered (p, q, c): (0,2,c0),(0,2,c1),(0,3,c0),(0,3,c1),(1,2,c0)...
    expected = [img[0, c, r, q].item() for r in (0, 1) for q in (2, 3) for c in (0, 1)]
    assert patches[0, 1].tolist() == expected
    assert torch.equal(unpatchify(patches, 2, (2, 2), 2), img)


def test_normalize_and_denormalize():
    patches = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    mean, var = 3.0, ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3  # unbiased, as MAE's torch.var
    expected = (patches - mean) / (var + 1e-6) ** 0.5
    torch.testing.assert_close(normalize_patches(patches), expected)
    torch.testing.assert_close(denormalize_patches(normalize_patches(patches), patches), patches)
