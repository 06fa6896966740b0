"""The convolutional positional encoder of data2vec speech: relative positions from grouped 1-D convolutions.

data2vec (Baevski et al. 2022, §4.2 speech) replaces wav2vec 2.0's single weight-normalised convolution by
``depth`` = 5 layers of [Conv1d(D, D, k, groups) -> LayerNorm (no affine) -> GELU], k = 19 (fairseq's
``conv_pos: 95`` spread over ``pos_conv_depth: 5``), 16 groups; the output is added to the frames.
Ref: fairseq examples/data2vec/models/data2vec_audio.py@3d262bb (``make_conv_pos`` in wav2vec2.py) and HF
``Data2VecAudioPositionalConvEmbedding`` (data2vec.md §6.2).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class PositionalConvLayer(nn.Module):
    """(B, D, N) -> (B, D, N): grouped "same" conv (an even kernel drops its last frame), LN over channels, GELU."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.trim = 1 if kernel % 2 == 0 else 0
        std = math.sqrt(4.0 / (kernel * dim))
        nn.init.normal_(self.conv.weight, mean=0.0, std=std)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.trim:
            x = x[:, :, : -self.trim]
        x = F.layer_norm(x.transpose(1, 2), x.shape[1:2]).transpose(1, 2)  # LN over channels, no affine, eps 1e-5
        return F.gelu(x)


class PositionalConv(nn.Module):
    """frames (B, N, D) -> positional signal (B, N, D), to be added to the frames."""

    def __init__(self, dim: int, *, depth: int = 5, kernel: int = 19, groups: int = 16) -> None:
        super().__init__()
        if depth < 1 or kernel < 1:
            raise ValueError(f"adapter.pos_conv_depth and pos_conv_kernel must be >= 1, got {depth}, {kernel}")
        if dim % groups != 0:
            raise ValueError(f"encoder.dim={dim} must be divisible by adapter.pos_conv_groups={groups}")
        self.layers = nn.ModuleList(PositionalConvLayer(dim, kernel, groups) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)  # (B, N, D) -> (B, D, N)
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)  # (B, D, N) -> (B, N, D)
