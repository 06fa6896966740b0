"""Stochastic depth and layer scale (CaiT, Touvron et al. 2021; used by BEiT / data2vec-vision)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DropPath(nn.Module):
    """Drop the whole residual branch per sample with probability ``p`` (Huang et al. 2016)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def sample_scale(self, x: Tensor) -> Tensor | None:
        """The per-sample factor for a branch like x (B, ..): (B, 1, ..) of 0 or 1 / (1 - p), or None when
        inactive (p = 0 or eval)."""
        if self.p == 0.0 or not self.training:
            return None
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x.new_empty(shape).bernoulli_(keep).div_(keep)  # (B, 1, ..): 0 or 1 / keep per sample

    def forward(self, x: Tensor) -> Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale  # one pass over x (not a multiply, then a divide)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch, initialised to ``init`` (1e-4 ViT-B, 1e-5 ViT-L)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma
