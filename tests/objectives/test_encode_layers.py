"""Objective.encode(layers=...): the features the probe pools when it reads intermediate encoder blocks."""

import pytest
import torch

from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.objectives.base import Objective, resolve_layers


def make(final_norm: bool) -> Objective:
    torch.manual_seed(0)
    enc = EncoderConfig(dim=32, depth=3, num_heads=2, norm_first=final_norm, final_norm=final_norm)
    adapter = ImageAdapter(ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1), dim=32, num_heads=2)
    return Objective(adapter, TransformerEncoder(enc)).eval()


def by_hand(model: Objective, x: torch.Tensor) -> list[torch.Tensor]:
    """Block outputs computed block by block, independently of TransformerEncoder.forward."""
    tokens = model.adapter.embed(x)
    h, outs = tokens.x, []
    for block in model.encoder.blocks:
        h, _ = block(h, tokens.padding_mask, tokens.attn_bias)
        outs.append(h)
    return outs


@pytest.mark.parametrize("final_norm", [True, False])
def test_layers_select_and_average_block_outputs(final_norm):
    model = make(final_norm)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        blocks = by_hand(model, x)
        torch.testing.assert_close(model.encode(x, layers=[0]), blocks[0])
        torch.testing.assert_close(model.encode(x, layers=[-1]), blocks[2])
        torch.testing.assert_close(model.encode(x, layers=[-2, -1]), (blocks[1] + blocks[2]) / 2)
        torch.testing.assert_close(model.encode(x, layers=[0, 1, 2]), (blocks[0] + blocks[1] + blocks[2]) / 3)
        final = model.encode(x)
    # the default is the encoder's final output: the last block after the final norm, if there is one
    expected = torch.nn.functional.layer_norm(blocks[2], (32,), model.encoder.norm.weight, model.encoder.norm.bias,
                                              model.encoder.norm.eps) if final_norm else blocks[2]
    torch.testing.assert_close(final, expected)


def test_bad_layer_lists_fail_clearly():
    assert resolve_layers([-1, 0], 4) == [3, 0]
    with pytest.raises(ValueError, match="at least one"):
        resolve_layers([], 4)
    with pytest.raises(ValueError, match=r"valid: -4\.\.3"):
        resolve_layers([4], 4)
    with pytest.raises(ValueError, match=r"valid: -4\.\.3"):
        resolve_layers([-5], 4)
    with pytest.raises(ValueError, match="more than once"):
        resolve_layers([3, -1], 4)
    with pytest.raises(ValueError, match="block indices"):
        make(False).encode(torch.randn(1, 1, 16, 16), layers=[1.5])
