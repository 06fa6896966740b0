"""Fixed sin-cos position embeddings (Vaswani et al. 2017; 2-D variant of MAE, He et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """positions: (N,) float -> (N, dim): [sin(pos * w_i), cos(pos * w_i)], w_i = 1 / 10000^(2i/dim)."""
    if dim % 2 != 0:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """(H*W, dim) table, row-major over the grid; half the channels encode the row, half the column
    (MAE ``get_2d_sincos_pos_embed`` ordering: first half from the column index w, second from the row h)."""
    if dim % 4 != 0:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {dim}")
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (H, W) each
    emb_w = sincos_1d(dim // 2, cols.reshape(-1))  # (H*W, dim/2)
    emb_h = sincos_1d(dim // 2, rows.reshape(-1))  # (H*W, dim/2)
    return torch.cat([emb_w, emb_h], dim=1)  # (H*W, dim)
