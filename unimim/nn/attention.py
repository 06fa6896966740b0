"""Multi-head self-attention on ``F.scaled_dot_product_attention`` with key padding and additive bias."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# On the CPU, PyTorch's fused (flash) SDPA kernel is slower than its plain matmul-softmax-matmul ("math") kernel
# for short sequences, mostly in the backward, and faster for long ones: sequences of up to this many tokens take
# the math kernel on the CPU (benchmarks/attention_cpu.py measures both; the GPU always gets PyTorch's choice).
CPU_MATH_MAX_TOKENS = 128


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
        short_on_cpu = x.device.type == "cpu" and T <= CPU_MATH_MAX_TOKENS
        with sdpa_kernel(SDPBackend.MATH) if short_on_cpu else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, H, T, hd) -> (B, T, D)
        return self.proj_drop(self.proj(out))
