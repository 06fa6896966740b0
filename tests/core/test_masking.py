import pytest
import torch

from unimim.core.masking import MaskInfo, gather_tokens, prepend_unmasked


def test_mask_info_round_trip():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 10, generator=g).argsort(dim=1) < 6  # exactly 6 masked per row
    info = MaskInfo.from_mask(mask)
    assert info.ids_keep.shape == (4, 4)
    x = torch.randn(4, 10, 3)
    visible = gather_tokens(x, info.ids_keep)  # (B, 4, D)
    assert torch.equal(visible, torch.stack([x[b][~mask[b]] for b in range(4)]))  # position order kept
    masked = torch.stack([x[b][mask[b]] for b in range(4)])
    restored = gather_tokens(torch.cat([visible, masked], dim=1), info.ids_restore)
    assert torch.equal(restored, x)
    assert int(info.mask.sum()) == 24


def test_unequal_counts_have_no_ids_keep():
    mask = torch.tensor([[True, False, False], [True, True, False]])
    info = MaskInfo.from_mask(mask)
    assert info.ids_keep is None
    assert info.ids_restore.shape == (2, 3)


def test_prepend_unmasked():
    mask = torch.tensor([[True, False]])
    assert prepend_unmasked(mask, 1).tolist() == [[False, True, False]]
    assert prepend_unmasked(mask, 0) is mask


def test_rejects_non_bool():
    import pytest

    with pytest.raises(ValueError, match="bool"):
        MaskInfo.from_mask(torch.zeros(2, 3))


def test_draw_masks_draws_r_masks_one_after_another_from_the_generator():
    import numpy as np

    from unimim.core.masking import MaskGenerator, draw_masks

    class Counting:
        """Masks the first k tokens, k = 1, 2, ... per call; records the arguments it was called with."""

        def __init__(self):
            self.calls = []

        def __call__(self, rng, num_tokens=None, maskable=None):
            self.calls.append((num_tokens, maskable))
            out = np.zeros(num_tokens, dtype=bool)
            out[: len(self.calls)] = True
            return out & (True if maskable is None else maskable)

    gen = Counting()
    assert isinstance(gen, MaskGenerator)
    maskable = np.array([True, True, False, True, True])
    masks = draw_masks(gen, np.random.default_rng(0), 3, 5, maskable)
    assert masks.shape == (3, 5) and masks.dtype == bool
    assert masks.tolist() == [[True, False, False, False, False], [True, True, False, False, False],
                              [True, True, False, False, False]]
    assert [c[0] for c in gen.calls] == [5, 5, 5]
    with pytest.raises(ValueError, match="num_masks"):
        draw_masks(gen, np.random.default_rng(0), 0, 5)
