"""Block.residual (layer scale and drop path folded into one addcmul) computes x + drop_path(ls(branch)) as the
modules do one by one: same outputs and gradients from the same seed, pre-LN and post-LN, train and eval."""

import pytest
import torch

from unimim.nn.block import Block


def _unfused(blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's forward written with the modules, one element-wise pass each."""
    if blk.norm_first:
        x = x + blk.drop_path(blk.ls1(blk.attn(blk.norm1(x))))
        ffn = blk.mlp(blk.norm2(x))
        return x + blk.drop_path(blk.ls2(ffn)), ffn
    x = blk.norm1(x + blk.drop_path(blk.ls1(blk.attn(x))))
    ffn = blk.mlp(x)
    return blk.norm2(x + blk.drop_path(blk.ls2(ffn))), ffn


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("layer_scale, drop_path", [(0.1, 0.5), (None, 0.5), (0.1, 0.0), (None, 0.0)])
@pytest.mark.parametrize("training", [True, False])
def test_block_residual_matches_the_modules_one_by_one(norm_first, layer_scale, drop_path, training):
    torch.manual_seed(0)
    blk = Block(32, 4, norm_first=norm_first, layer_scale_init=layer_scale, drop_path=drop_path).train(training)
    if layer_scale:
        with torch.no_grad():  # distinct per-channel scales, so a wrong broadcast shows
            blk.ls1.gamma.uniform_(0.5, 1.5)
            blk.ls2.gamma.uniform_(0.5, 1.5)
    x = torch.randn(16, 5, 32)
    outs, grads = [], []
    for fn in (lambda x: blk(x), lambda x: _unfused(blk, x)):
        torch.manual_seed(1)
        xi = x.clone().requires_grad_(True)
        y, ffn = fn(xi)
        (y.square().sum() + ffn.sum()).backward()
        outs.append((y.detach(), ffn.detach()))
        grads.append([xi.grad] + [p.grad.clone() for p in blk.parameters()])
        blk.zero_grad(set_to_none=True)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if training and drop_path:  # the drop path did drop some samples' branches (so the check above covered it)
        torch.manual_seed(1)
        assert blk.drop_path.sample_scale(x).eq(0).any()
