import math

import pytest
import torch

from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from modalities.image.model.relative_position import relative_position_index
from unimim.nn.pos_embed import sincos_2d


def _adapter(**kw):
    torch.manual_seed(0)
    cfg = ImageAdapterConfig(image_size=8, patch_size=4, in_chans=1, **kw)
    return ImageAdapter(cfg, dim=8, num_heads=2)


@pytest.mark.parametrize("positions", ["learned", "sincos", "relative"])
def test_shapes(positions):
    a = _adapter(positions=positions)
    tok = a.embed(torch.randn(3, 1, 8, 8))
    assert tok.x.shape == (3, 5, 8)
    assert a.num_prefix_tokens == 1
    if positions == "relative":
        assert tok.attn_bias.shape == (1, 2, 5, 5)
    else:
        assert tok.attn_bias is None


def test_mask_token_substitution():
    a = _adapter(positions="learned")
    x = torch.randn(2, 1, 8, 8)
    mask = torch.tensor([[True, False, False, True], [False] * 4])
    masked = a.embed(x, mask=mask).x
    plain = a.embed(x).x
    pos = a.pos_embed[0, 1:]
    torch.testing.assert_close(masked[0, 1 + 0], a.mask_token[0, 0] + pos[0])
    torch.testing.assert_close(masked[0, 1 + 3], a.mask_token[0, 0] + pos[3])
    torch.testing.assert_close(masked[0, 2:4], plain[0, 2:4])
    torch.testing.assert_close(masked[1], plain[1])


def test_sincos_hand_values():
    table = sincos_2d(4, (2, 3))  # (6, 4): [sin(w), cos(w), sin(h), cos(h)] with omega = 1 for dim 1
    r, c = 1, 2
    row = table[r * 3 + c]
    expected = torch.tensor([math.sin(c), math.cos(c), math.sin(r), math.cos(r)])
    torch.testing.assert_close(row, expected)


def test_relative_index_layout():
    idx = relative_position_index((2, 2))
    n_rel = 3 * 3
    assert idx[0, 0] == n_rel + 2 and (idx[0, 1:] == n_rel).all() and (idx[1:, 0] == n_rel + 1).all()
    # offset (dy, dx) = (0, 0) is the centre entry for every patch
    assert (idx[1:, 1:].diagonal() == 4).all()
    # patch (0,0) -> patch (1,1): dy=-1, dx=-1 -> (0)*(3) + 0 = 0 ; reverse -> 8
    assert idx[1, 4] == 0 and idx[4, 1] == 8


def test_bad_inputs():
    a = _adapter()
    with pytest.raises(ValueError, match="expected images"):
        a.embed(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="mask shape"):
        a.embed(torch.randn(2, 1, 8, 8), mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        ImageAdapterConfig(image_size=30, patch_size=4)


def test_without_cls_token():
    a = _adapter(positions="sincos", cls_token=False)
    assert a.num_prefix_tokens == 0
    assert a.embed(torch.randn(2, 1, 8, 8)).x.shape == (2, 4, 8)
    with pytest.raises(ValueError, match="needs cls_token"):
        ImageAdapterConfig(image_size=8, patch_size=4, positions="relative", cls_token=False)


def test_input_norm_is_a_layer_norm_over_cls_patches_and_positions():
    """data2vec 2.0 image: LayerNorm(cls + patches + positions) before the first post-LN block, cls ~ N(0, 1)."""
    torch.manual_seed(0)
    cfg = ImageAdapterConfig(image_size=8, patch_size=4, in_chans=1, positions="sincos")
    plain = ImageAdapter(cfg, dim=64, num_heads=2)
    normed = ImageAdapter(ImageAdapterConfig(**{**vars(cfg), "input_norm": True}), dim=64, num_heads=2, norm_eps=1e-6)
    normed.load_state_dict(plain.state_dict(), strict=False)  # the same patch embedding, cls and mask token
    x = torch.randn(3, 1, 8, 8)
    mask = torch.tensor([[True, False, False, True]] * 3)
    with torch.no_grad():
        expected = torch.nn.functional.layer_norm(plain.embed(x, mask=mask).x, (64,), eps=1e-6)
        torch.testing.assert_close(normed.embed(x, mask=mask).x, expected)
    big = ImageAdapter(ImageAdapterConfig(**{**vars(cfg), "cls_init_std": 1.0}), dim=4096, num_heads=2)
    assert abs(float(big.cls_token.std()) - 1.0) < 0.05 and float(big.cls_token.abs().max()) > 2.5  # not truncated
    assert abs(float(plain.cls_token.std()) - 0.02) < 0.006  # ViT's default: trunc_normal_(std=0.02)
    with pytest.raises(ValueError, match="cls_init_std"):
        ImageAdapterConfig(cls_init_std=0.0)
