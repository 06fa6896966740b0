"""Multi-head self-attention on ``F.scaled_dot_product_attention`` with key padding and additive bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# On the CPU, PyTorch's fused (flash) SDPA kernel is slower than matmul-softmax-matmul for short sequences, mostly in
# the backward, and faster for long ones (and, without a backward, for every length); and it takes no dropout (SDPA
# then falls back to its "math" kernel, which on the CPU casts bf16 q, k, v to fp32 and so runs q k^T without the
# bf16 matrix units). So on the CPU, sequences of up to this many tokens when gradients are recorded, and every
# sequence while attention dropout is active, take the explicit path (:func:`explicit_attention`: bf16 matmuls
# under autocast); a forward without gradients (the EMA teacher, evaluation) takes the fused kernel; the GPU always
# gets PyTorch's choice. benchmarks/attention_cpu.py and benchmarks/levers_cpu.py measure them.
CPU_MATH_MAX_TOKENS = 256


def dropout_keep(shape: torch.Size, p: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, float]:
    """The keep mask of dropout with drop probability ``p``: (shape) of 0 / 1 in ``dtype``, each entry 1 with
    probability ``1 - p'`` independently, and the scale ``1 / (1 - p')`` that makes the kept entries unbiased, where
    ``p'`` is ``p`` rounded to a multiple of 2^-16 (|p' - p| <= 7.7e-6; torch's ``F.dropout`` rounds to 2^-24).

    Each entry compares 16 random bits with a threshold, four entries per 64-bit draw of the generator. On the CPU,
    whose generator is sequential (one core draws while the others wait), the draw costs a third of ``torch.rand``'s
    per entry (benchmarks/levers_cpu.py, section dropout). Seeded by torch's default generator, as ``F.dropout``."""
    n = shape.numel()
    t = round(p * 65536)  # drop iff the 16 bits, read as an unsigned number, are < t
    if t >= 65536:  # p' = 1: everything dropped
        return torch.zeros(shape, dtype=dtype, device=device), 0.0
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # full 64-bit range
    keep = torch.empty(shape, dtype=dtype, device=device)  # written by the comparison directly: 0.14 of the time
    # of a bool result cast to dtype (AMD EPYC), and no cast by each multiply with it, forward and backward
    torch.ge(bits.view(torch.int16)[:n].view(shape), t - 32768, out=keep)  # int16 b >= t - 32768 <=> b + 32768 >= t
    return keep, 65536 / (65536 - t)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, *,
                       masked_rows: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(hd) + mask) v with dropout on the probabilities, written out (the eager attention of
    timm / BEiT): q, k, v (B, H, T, hd), mask (1 | B, H | 1, T, T) additive -> (B, H, T, hd). Under autocast the
    two matmuls run in the autocast dtype (and on the CPU the softmax too: CPU autocast keeps softmax in the input's
    dtype; its kernel accumulates in fp32), as autocast does for any model written this way.
    ``masked_rows``: the mask may hold ``-inf`` (key padding), so that a row whose keys are all masked gives zeros
    (as SDPA's safe softmax), not NaN.

    Dropout multiplies the probabilities by a 0 / 1 keep mask (:func:`dropout_keep`; exact in any dtype, so no
    cast of the (B, H, T, T) map) and the output by 1 / (1 - p'): F.dropout's distribution (p rounded to 2^-16)
    with the scale moved past the linear ``@ v``."""
    # k and v are usually head views of one fused qkv projection (token stride 3 D): the batched matmuls on such
    # strides take a slower path than on contiguous copies (fwd + bwd of the MAE decoder's (8, 16, 197, 32)
    # attention 0.92 of the time with the copies; q is copied by its scaling anyway)
    k, v = k.contiguous(), v.contiguous()
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, hd) x (B, H, hd, T) -> (B, H, T, T)
    if mask is not None:
        logits = logits + mask
    probs = logits.softmax(dim=-1).to(v.dtype)  # (B, H, T, T)
    if masked_rows:
        probs = probs.nan_to_num(0.0)  # fully masked rows: 0 / 0 -> 0
    if dropout_p > 0:
        keep, scale = dropout_keep(probs.shape, dropout_p, probs.device, probs.dtype)
        return ((probs * keep) @ v) * scale  # (B, H, T, T) x (B, H, T, hd) -> (B, H, T, hd)
    return probs @ v  # (B, H, T, T) x (B, H, T, hd) -> (B, H, T, hd)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    ``qkv_bias="qv"`` gives the BEiT / data2vec-vision layout (bias on q and v, none on k); ``True`` biases all three.
    """

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool | str = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias is True)
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        elif qkv_bias not in (True, False):
            raise ValueError(f"qkv_bias must be true, false or 'qv', got {qkv_bias!r}")
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, attn_bias: Tensor | None = None) -> Tensor:
        """x: (B, T, D); padding_mask: (B, T) bool, True = padding (never attended to);
        attn_bias: (1 | B, H, T, T) added to the attention logits. Returns (B, T, D)."""
        B, T, D = x.shape
        if hasattr(self, "q_bias"):
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
            qkv = F.linear(x, self.qkv.weight, bias)
        else:
            qkv = self.qkv(x)
        qkv = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        q, k, v = qkv.unbind(0)
        mask = None
        if attn_bias is not None:
            mask = attn_bias.to(q.dtype)
        if padding_mask is not None:
            pad = torch.zeros(B, 1, 1, T, dtype=q.dtype, device=x.device)
            pad = pad.masked_fill(padding_mask[:, None, None, :], float("-inf"))  # (B, 1, 1, T)
            mask = pad if mask is None else mask + pad
        drop = self.attn_drop if self.training else 0.0
        if x.device.type == "cpu" and (drop > 0 or (T <= CPU_MATH_MAX_TOKENS and torch.is_grad_enabled())):
            out = explicit_attention(q, k, v, mask, drop, masked_rows=padding_mask is not None)  # (B, H, T, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, H, T, hd) -> (B, T, D)
        return self.proj_drop(self.proj(out))
