"""Shared relative position bias of BEiT / data2vec-vision (Bao et al. 2021, §2.5 and appendix).

One learned table of (2H-1)(2W-1) + 3 entries per head: every patch pair indexes its (dy, dx) offset;
three extra entries serve cls->patch, patch->cls and cls->cls. The same bias is added to the attention
logits of every layer (``use_shared_rel_pos_bias``). Ref: microsoft/unilm beit/modeling_finetune.py@768a3c8
``RelativePositionBias``; transformers ``BeitRelativePositionBias`` (same table layout).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def relative_position_index(grid: tuple[int, int]) -> Tensor:
    """(H*W + 1, H*W + 1) long index into the bias table; row/column 0 is the cls token."""
    h, w = grid
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N) offsets (dy, dx)
    rel = rel.permute(1, 2, 0)  # (N, N, 2)
    idx_patch = (rel[..., 0] + h - 1) * (2 * w - 1) + (rel[..., 1] + w - 1)  # (N, N) in [0, (2H-1)(2W-1))
    n_rel = (2 * h - 1) * (2 * w - 1)
    n = h * w
    index = torch.zeros(n + 1, n + 1, dtype=torch.long)
    index[1:, 1:] = idx_patch
    index[0, 1:] = n_rel  # cls -> patch
    index[1:, 0] = n_rel + 1  # patch -> cls
    index[0, 0] = n_rel + 2  # cls -> cls
    return index


class RelativePositionBias(nn.Module):
    """Learned bias table -> (1, H_heads, T, T) additive attention bias for T = 1 + grid patches."""

    def __init__(self, grid: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.grid = grid
        num_entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        self.table = nn.Parameter(torch.zeros(num_entries, num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", relative_position_index(grid), persistent=False)

    def forward(self) -> Tensor:
        t = self.index.shape[0]
        bias = self.table[self.index.reshape(-1)].view(t, t, -1)  # (T*T, heads) -> (T, T, heads)
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, heads, T, T)
