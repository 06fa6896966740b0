"""The CPU attention kernel choice (unimim.nn.attention.CPU_MATH_MAX_TOKENS, the explicit path) is a speed choice
only: outputs and gradients match PyTorch's fused kernel, with key padding and an additive bias; the explicit path
matches a float64 reference, keeps SDPA's zeros for fully masked rows, and drops probabilities as SDPA's dropout."""

import pytest
import torch
import torch.nn.functional as F

import unimim.nn.attention as attention
from unimim.nn.attention import Attention, dropout_keep, explicit_attention


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


def _reference(q, k, v, mask):
    """softmax(q k^T / sqrt(hd) + mask) v in float64, by hand."""
    q, k, v = q.double(), k.double(), v.double()
    logits = torch.einsum("bhtd,bhsd->bhts", q, k) / q.shape[-1] ** 0.5 + mask.double()
    return torch.einsum("bhts,bhsd->bhtd", logits.softmax(-1), v)


def test_explicit_attention_matches_a_float64_reference_in_fp32_and_bf16():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g) for _ in range(3))
    mask = torch.randn(1, 3, 9, 9, generator=g)
    ref = _reference(q, k, v, mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask, 0.0).double(), ref, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", torch.bfloat16):
        low = explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask.bfloat16(), 0.0)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), ref, rtol=0.05, atol=0.05)


def test_explicit_attention_zeroes_fully_masked_rows_as_sdpa():
    q, k, v = (torch.randn(2, 1, 4, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 4, 4)
    mask[1, :, 2] = float("-inf")  # row 2 of example 1 attends to nothing
    ours = explicit_attention(q, k, v, mask, 0.0, masked_rows=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(ours[1, 0, 2], torch.zeros(8))


def test_explicit_attention_dropout_is_a_bernoulli_keep_of_each_probability():
    """Uniform probabilities 1/T and v = I: the output is the dropped probability map itself, each entry 0 with
    probability p and (1/T) / (1 - p) otherwise, independently."""
    torch.manual_seed(0)
    t, p = 64, 0.25
    q = torch.zeros(4, 2, t, t)
    v = torch.eye(t).expand(4, 2, t, t)
    out = explicit_attention(q, q, v, None, p)  # (4, 2, T, T): the dropped map
    kept = out != 0
    assert set(out[kept].unique().tolist()) == pytest.approx([1 / t / (1 - p)])
    n = kept.numel()
    assert abs((~kept).float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5  # within 4 sigma
    assert not torch.equal(kept[0, 0], kept[0, 1])  # a draw per (example, head, row, key), not per pattern


def test_dropout_keep_rounds_p_to_16_bits_and_keeps_entries_independently():
    """p = 0.05 -> p' = 3277 / 65536 (hand-computed), scale 65536 / 62259; drop frequency within 4 sigma of p';
    the four entries drawn from one 64-bit word are independent (at p = 1/2 each pair drops together 1/4 of the
    time); the draw follows torch's seed; p = 0 keeps everything, p = 1 drops everything."""
    torch.manual_seed(0)
    keep, scale = dropout_keep(torch.Size((64, 6, 197, 197)), 0.05, torch.device("cpu"), torch.bfloat16)
    assert keep.dtype == torch.bfloat16 and set(keep.unique().tolist()) == {0.0, 1.0}
    assert scale == 65536 / 62259
    n, p_eff = keep.numel(), 3277 / 65536
    assert abs((keep == 0).double().mean().item() - p_eff) < 4 * (p_eff * (1 - p_eff) / n) ** 0.5

    half, _ = dropout_keep(torch.Size((4, 1 << 18)), 0.5, torch.device("cpu"), torch.float32)
    words = (half == 0).reshape(-1, 4).double()  # the 4 int16 lanes of each 64-bit draw
    both = (words[:, :, None] * words[:, None, :]).mean(0)  # (4, 4): P(lane i and lane j dropped)
    sigma = (0.25 * 0.75 / words.shape[0]) ** 0.5
    off_diagonal = both[~torch.eye(4, dtype=torch.bool)]
    assert (off_diagonal - 0.25).abs().max().item() < 5 * sigma
    assert (words.mean(0) - 0.5).abs().max().item() < 5 * (0.25 / words.shape[0]) ** 0.5

    torch.manual_seed(1)
    a, _ = dropout_keep(torch.Size((1000,)), 0.3, torch.device("cpu"), torch.float32)
    torch.manual_seed(1)
    b, _ = dropout_keep(torch.Size((1000,)), 0.3, torch.device("cpu"), torch.float32)
    assert torch.equal(a, b)
    keep0, scale0 = dropout_keep(torch.Size((7,)), 0.0, torch.device("cpu"), torch.float32)
    assert torch.equal(keep0, torch.ones(7)) and scale0 == 1.0
    keep1, scale1 = dropout_keep(torch.Size((7,)), 1.0, torch.device("cpu"), torch.float32)
    assert torch.equal(keep1, torch.zeros(7)) and scale1 == 0.0
