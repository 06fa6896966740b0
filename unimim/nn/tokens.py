"""Embedded tokens as the encoder consumes them: the interface between modality adapters and the core."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unimim.core.masking import gather_tokens


@dataclass
class Tokens:
    """Embedded tokens, positions already applied.

    Attributes:
        x: (B, T, D) tokens, prefix tokens (e.g. cls) first.
        padding_mask: (B, T) bool, ``True`` = padding; ``None`` when nothing is padded.
        attn_bias: (1 | B, H, T, T) additive attention bias (e.g. shared relative position bias) or ``None``.
        grid: (H, W) of the tokens when they are the patches of a 2-D grid and nothing else (an image adapter's
            local features, before the cls token), else ``None``.
    """

    x: Tensor
    padding_mask: Tensor | None = None
    attn_bias: Tensor | None = None
    grid: tuple[int, int] | None = None

    def repeat_interleave(self, r: int) -> Tokens:
        """Every row repeated ``r`` times in place (row b becomes rows b*r .. b*r + r-1): (B, ...) -> (B*r, ...),
        the layout of R masks per example (``Batch.mask.flatten(0, 1)``)."""
        if r == 1:
            return self
        pad = None if self.padding_mask is None else self.padding_mask.repeat_interleave(r, 0)
        bias = self.attn_bias
        if bias is not None and bias.shape[0] > 1:
            bias = bias.repeat_interleave(r, 0)
        return Tokens(x=self.x.repeat_interleave(r, 0), padding_mask=pad, attn_bias=bias, grid=self.grid)

    def select(self, ids: Tensor) -> Tokens:
        """Keep tokens ``ids`` (B, T') of every row; the bias is gathered on both token axes."""
        x = gather_tokens(self.x, ids)  # (B, T, D) -> (B, T', D)
        pad = None if self.padding_mask is None else torch.gather(self.padding_mask, 1, ids)  # (B, T')
        bias = None
        if self.attn_bias is not None:
            b, h = ids.shape[0], self.attn_bias.shape[1]
            full = self.attn_bias.expand(b, h, -1, -1)  # (B, H, T, T)
            rows = ids[:, None, :, None].expand(b, h, ids.shape[1], full.shape[-1])
            bias = torch.gather(full, 2, rows)  # (B, H, T', T)
            cols = ids[:, None, None, :].expand(b, h, ids.shape[1], ids.shape[1])
            bias = torch.gather(bias, 3, cols)  # (B, H, T', T')
        return Tokens(x=x, padding_mask=pad, attn_bias=bias)
