"""The CPU attention kernel choice (unimim.nn.attention.CPU_MATH_MAX_TOKENS) is a speed choice only: outputs and
gradients match PyTorch's fused kernel, with key padding and an additive bias."""

import pytest
import torch

import unimim.nn.attention as attention
from unimim.nn.attention import Attention


def _run(math_max_tokens: int, x: torch.Tensor, pad: torch.Tensor, bias: torch.Tensor):
    attention.CPU_MATH_MAX_TOKENS = math_max_tokens
    torch.manual_seed(0)
    attn = Attention(16, 4)
    x = x.clone().requires_grad_(True)
    y = attn(x, padding_mask=pad, attn_bias=bias)  # (B, T, D)
    (y[~pad] ** 2).sum().backward()
    return y.detach()[~pad], x.grad[~pad], attn.qkv.weight.grad


@pytest.mark.parametrize("with_bias", [False, True])
def test_cpu_kernel_matches_the_fused_kernel(monkeypatch, with_bias):
    monkeypatch.setattr(attention, "CPU_MATH_MAX_TOKENS", attention.CPU_MATH_MAX_TOKENS)  # restored afterwards
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 16, generator=g)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    bias = torch.randn(1, 4, 7, 7, generator=g) if with_bias else None
    ref = _run(7, x, pad, bias)  # T = 7 <= 7: the math kernel
    fused = _run(6, x, pad, bias)  # T = 7 > 6: PyTorch's default (fused) kernel
    for a, b in zip(ref, fused):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
