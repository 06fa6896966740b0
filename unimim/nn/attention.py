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
# under autocast, softmax in fp32); a forward without gradients (the EMA teacher, evaluation) takes the fused
# kernel; the GPU always gets PyTorch's choice. benchmarks/attention_cpu.py and benchmarks/levers_cpu.py measure them.
CPU_MATH_MAX_TOKENS = 256


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, *,
                       masked_rows: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(hd) + mask) v with dropout on the probabilities, written out (the eager attention of
    timm / BEiT): q, k, v (B, H, T, hd), mask (1 | B, H | 1, T, T) additive -> (B, H, T, hd). Under autocast the
    two matmuls run in the autocast dtype and the softmax in fp32, as autocast does for any model written this way.
    ``masked_rows``: the mask may hold ``-inf`` (key padding), so that a row whose keys are all masked gives zeros
    (as SDPA's safe softmax), not NaN."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, hd) x (B, H, hd, T) -> (B, H, T, T)
    if mask is not None:
        logits = logits + mask
    probs = logits.softmax(dim=-1)  # fp32 under autocast
    if masked_rows:
        probs = probs.nan_to_num(0.0)  # fully masked rows: 0 / 0 -> 0
    if dropout_p > 0:  # each probability kept with probability 1 - p (one fp32 uniform draw each) and scaled by
        # 1 / (1 - p): F.dropout's distribution and arithmetic, drawn without bernoulli_ and built in place in the
        # draw's buffer (0.57-0.67 of F.dropout's time on the CPU: benchmarks/levers_cpu.py, section dropout)
        probs = probs * torch.rand_like(probs, dtype=torch.float32).ge_(dropout_p).div_(1.0 - dropout_p)
    return probs.to(v.dtype) @ v  # (B, H, T, T) x (B, H, T, hd) -> (B, H, T, hd)


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
