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
    assert info.num_masked == 24


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
