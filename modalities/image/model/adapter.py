"""Image adapter: patch embedding, cls token, learned mask token and positions (ViT, Dosovitskiy et al. 2021).

Positions: ``learned`` absolute (ViT), ``sincos`` fixed 2-D (MAE, data2vec 2.0), or ``relative``: BEiT's shared
relative position bias, returned as ``Tokens.attn_bias`` and added to the logits of every layer (data2vec 1.0
vision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.image.model.relative_position import RelativePositionBias
from unimim.nn.pos_embed import sincos_2d
from unimim.nn.tokens import Tokens


@dataclass
class ImageAdapterConfig:
    image_size: int = 224        # input side in pixels (square)
    patch_size: int = 16         # patch side in pixels
    in_chans: int = 3            # 3 RGB, 1 grayscale
    positions: Literal["learned", "sincos", "relative"] = "learned"
    cls_token: bool = True       # prepend a learned cls token (never masked)
    cls_init_std: float | None = None  # None: ViT's truncated normal (std 0.02); a number: N(0, std^2) (2.0 image: 1)
    input_norm: bool = False     # LayerNorm over cls + patches + positions before the first block (data2vec 2.0
                                 # image: its post-LN encoder would otherwise see unnormalised input)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_chans"):
            if getattr(self, name) < 1:
                raise ValueError(f"adapter.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"adapter.image_size={self.image_size} is not divisible by adapter.patch_size={self.patch_size}"
            )
        if self.cls_init_std is not None and not self.cls_init_std > 0:
            raise ValueError(f"adapter.cls_init_std must be > 0 or null, got {self.cls_init_std}")
        if self.positions == "relative" and not self.cls_token:
            raise ValueError("adapter.positions='relative' uses the BEiT table layout, which needs cls_token: true")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return (side, side)


class ImageAdapter(nn.Module):
    """(B, C, S, S) images -> Tokens with x (B, 1 + N, D), N = (S / patch)^2."""

    def __init__(self, cfg: ImageAdapterConfig, *, dim: int, num_heads: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix_tokens = int(cfg.cls_token)
        self.patch_embed = nn.Conv2d(cfg.in_chans, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.cls_token else None
        self.pos_embed: nn.Parameter | None = None
        self.rel_pos: RelativePositionBias | None = None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if cfg.input_norm else None
        num_tokens = self.num_patches + self.num_prefix_tokens
        if cfg.positions == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        elif cfg.positions == "sincos":
            table = sincos_2d(dim, self.grid)  # (N, D)
            if cfg.cls_token:
                table = torch.cat([torch.zeros(1, dim), table])  # cls gets the zero position (MAE)
            self.register_buffer("pos_table", table.unsqueeze(0), persistent=False)  # (1, T, D)
        elif cfg.positions == "relative":
            self.rel_pos = RelativePositionBias(self.grid, num_heads)
        else:
            raise ValueError(f"adapter.positions must be 'learned', 'sincos' or 'relative', got {cfg.positions!r}")
        w = self.patch_embed.weight.data
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        if self.cls_token is not None:
            if cfg.cls_init_std is None:
                nn.init.trunc_normal_(self.cls_token, std=0.02)
            else:  # fairseq data2vec 2.0 ``extra_tokens``: nn.init.normal_
                nn.init.normal_(self.cls_token, std=cfg.cls_init_std)

    def positions(self, grid: tuple[int, int]) -> Tensor | None:
        """Absolute positions for a patch ``grid`` (1, P + h*w, D), or ``None`` (relative bias). At the adapter's own
        grid the stored table; at any other, learned positions resized bicubically over the grid (DINO's
        ``interpolate_pos_encoding``, timm's dynamic image size) and sin-cos positions recomputed for it."""
        if self.rel_pos is not None:
            return None
        if tuple(grid) == tuple(self.grid):
            return self.pos_embed if self.pos_embed is not None else self.pos_table
        p = self.num_prefix_tokens
        if self.pos_embed is None:
            dim = self.pos_table.shape[-1]
            table = sincos_2d(dim, grid).to(self.pos_table)  # (h*w, D)
            return torch.cat([self.pos_table[0, :p], table]).unsqueeze(0)  # (1, P + h*w, D)
        dim = self.pos_embed.shape[-1]
        gh, gw = self.grid
        table = self.pos_embed[:, p:].reshape(1, gh, gw, dim).permute(0, 3, 1, 2)  # (1, N, D) -> (1, D, H, W)
        table = F.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False)  # (1, D, h, w)
        return torch.cat([self.pos_embed[:, :p], table.flatten(2).transpose(1, 2)], dim=1)  # (1, P + h*w, D)

    def local(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tokens:
        """The local encoder (patch embedding), run once per example: inputs (B, C, H, W) with H, W multiples of the
        patch size -> Tokens(x (B, N, D), grid (h, w)); no cls token, no positions."""
        if padding_mask is not None:
            raise ValueError("images have no padding; padding_mask must be None")
        size, patch = self.cfg.image_size, self.cfg.patch_size
        if inputs.dim() != 4 or inputs.shape[1] != self.cfg.in_chans or inputs.shape[-1] % patch \
                or inputs.shape[-2] % patch:
            raise ValueError(
                f"expected images (B, {self.cfg.in_chans}, H, W) with H and W multiples of {patch} "
                f"(e.g. {size} x {size}), got {tuple(inputs.shape)}"
            )
        grid = (inputs.shape[-2] // patch, inputs.shape[-1] // patch)
        if self.rel_pos is not None and grid != tuple(self.grid):
            raise ValueError(f"the relative position bias is built for {size} x {size} images; got "
                             f"{tuple(inputs.shape[-2:])} (other sizes need absolute positions: learned or sincos)")
        x = self.patch_embed(inputs).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)
        return Tokens(x=x, grid=grid)

    def embed_features(self, local: Tokens, mask: Tensor | None = None, *, drop_masked: bool = False) -> Tokens:
        """Patch features (B, N, D) on ``local.grid`` -> Tokens(x (B, T, D), attn_bias (1, heads, T, T) | None),
        T = N + prefix: masked patches replaced by the mask token (zeroed with ``drop_masked``: the student drops
        them; every later step here is per token, so nothing of theirs reaches a visible token), cls prepended,
        positions added."""
        x, grid = local.x, local.grid or tuple(self.grid)
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the patch grid {tuple(x.shape[:2])}")
            fill = x.new_zeros(()) if drop_masked else self.mask_token.to(x.dtype)
            x = torch.where(mask.unsqueeze(-1), fill, x)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B, T, D)
        pos = self.positions(grid)
        if pos is not None:
            x = x + pos
        if self.norm is not None:  # per token: a dropped (masked) token still reaches no visible one
            x = self.norm(x)
        bias = self.rel_pos() if self.rel_pos is not None else None
        return Tokens(x=x, padding_mask=None, attn_bias=bias)

    def embed(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tokens:
        """inputs: (B, C, H, W) with H, W multiples of the patch size (the configured ``image_size`` or any other:
        absolute positions follow the grid, see :meth:`positions`); mask: (B, N) bool, True = replace the patch by
        the mask token. Returns Tokens(x (B, T, D), attn_bias (1, heads, T, T) | None), T = N + prefix.
        = ``embed_features(local(inputs), mask)``."""
        return self.embed_features(self.local(inputs, padding_mask), mask)
