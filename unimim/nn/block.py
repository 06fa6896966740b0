"""Transformer block, pre-LN (ViT / BEiT) or post-LN (BERT / wav2vec 2.0), that also returns its FFN output.

data2vec's speech and text targets (and all of data2vec 2.0's) are the FFN output *before* the last
residual connection (fairseq ``TransformerSentenceEncoderLayer``: ``layer_result = fc2(x)``); vision
1.0 targets are the block outputs. Returning both makes the choice a config value, not a hook.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unimim.nn.attention import Attention
from unimim.nn.drop import DropPath, LayerScale


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout (``act_dropout``, default ``dropout``) -> fc2 -> dropout. (.., D) -> (.., D).
    timm's ViT drops after the activation with the same rate; fairseq's speech/text layers use
    ``activation_dropout`` (0 in data2vec) there."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, act_dropout: float | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.act_drop = nn.Dropout(dropout if act_dropout is None else act_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act_drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """One transformer block.

    pre-LN:  x = x + attn(LN1(x));   f = mlp(LN2(x));   x = x + f
    post-LN: x = LN1(x + attn(x));   f = mlp(x);        x = LN2(x + f)
    (with optional layer scale and drop path on each residual branch).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool | str = True,
        norm_first: bool = True,
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        act_dropout: float | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_dropout, proj_drop=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout, act_dropout)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, attn_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (B, T, D) -> (block output (B, T, D), FFN output before the residual (B, T, D))."""
        if self.norm_first:
            x = self.residual(x, self.attn(self.norm1(x), padding_mask, attn_bias), self.ls1)
            ffn = self.mlp(self.norm2(x))
            x = self.residual(x, ffn, self.ls2)
        else:
            x = self.norm1(self.residual(x, self.attn(x, padding_mask, attn_bias), self.ls1))
            ffn = self.mlp(x)
            x = self.norm2(self.residual(x, ffn, self.ls2))
        return x, ffn

    def residual(self, x: Tensor, branch: Tensor, ls: nn.Module) -> Tensor:
        """x + drop_path(ls(branch)), x and branch (B, T, D), in one pass when there is a scale: the layer-scale
        gamma (D,) and the per-sample drop-path factor (B, 1, 1) multiply into one (B, 1, D) | (D,) factor, and
        ``addcmul`` adds branch * factor to x (one kernel instead of up to three element-wise passes)."""
        scale = ls.gamma if isinstance(ls, LayerScale) else None
        keep = self.drop_path.sample_scale(x) if isinstance(self.drop_path, DropPath) else None  # (B, 1, 1)
        if keep is not None:
            scale = keep if scale is None else keep * scale  # (B, 1, D)
        return x + branch if scale is None else torch.addcmul(x, branch, scale)
