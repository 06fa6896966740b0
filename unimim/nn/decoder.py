"""The lightweight convolutional decoder of data2vec 2.0 (Baevski et al. 2023, §3 "Decoder").

The student's visible-token outputs are put back in place, masked slots are filled with small Gaussian noise,
and a few grouped convolutions over the token grid (2-D for images, 1-D for sequences) reconstruct every
position: ``layers x [conv(k, groups) -> LayerNorm (no affine) -> GELU]``, residual between same-width layers,
then a linear map back to the encoder width (or ``projection_layers`` linear maps with GELU between them, the
first widening by ``projection_ratio``: the text decoder's Linear(768, 1536)-GELU-Linear(1536, 768)); dropout on the
encoder outputs before the noise is filled in (``input_dropout``, the reference's ``decoder.input_dropout``) and the
residual can be switched off (``residual``, ``decoder_residual``; the text base turns it off).
Ref: fairseq examples/data2vec/models/modalities/modules.py@3d262bb
``Decoder1d`` / ``Decoder2d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DecoderConfig:
    dim: int = 768        # decoder width (v2 image base: 768; audio: 384)
    layers: int = 6       # conv layers (image 6, audio 4, text 5)
    kernel: int = 3       # kernel size (image 3, audio 7, text 9)
    groups: int = 16      # conv groups (image/audio 16, text 1)
    residual: bool = True           # residual between same-width conv layers (text base: false)
    projection_layers: int = 1      # linear maps back to the encoder width (text base: 2)
    projection_ratio: float = 2.0   # width of the first of them, x decoder.dim (with projection_layers > 1)
    input_dropout: float = 0.0      # dropout on the encoder outputs fed to the decoder (audio/text base: 0.1)

    def __post_init__(self) -> None:
        if self.layers < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("decoder.layers must be >= 1 and decoder.kernel a positive odd number")
        if self.projection_layers < 1 or not self.projection_ratio > 0:
            raise ValueError("decoder.projection_layers must be >= 1 and decoder.projection_ratio > 0")
        if not 0 <= self.input_dropout < 1:
            raise ValueError(f"decoder.input_dropout must lie in [0, 1), got {self.input_dropout}")
        if self.dim % self.groups != 0:
            raise ValueError(f"decoder.dim={self.dim} must be divisible by decoder.groups={self.groups}")


class ConvDecoder(nn.Module):
    """(B, N, D) tokens on a ``grid`` (H, W) or a 1-D sequence (grid None) -> (B, N, D) predictions."""

    def __init__(self, cfg: DecoderConfig, *, in_dim: int, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.grid = grid
        conv = nn.Conv2d if grid is not None else nn.Conv1d
        self.convs = nn.ModuleList()
        for i in range(cfg.layers):
            c_in = in_dim if i == 0 else cfg.dim
            self.convs.append(conv(c_in, cfg.dim, cfg.kernel, padding=cfg.kernel // 2, groups=cfg.groups))
        self.residual = [cfg.residual and (i > 0 or in_dim == cfg.dim) for i in range(cfg.layers)]
        self.input_dropout = cfg.input_dropout
        if cfg.projection_layers == 1:
            self.proj = nn.Linear(cfg.dim, in_dim)
        else:  # Linear(dim, ratio*dim) - GELU - [Linear(ratio*dim, ratio*dim) - GELU]* - Linear(ratio*dim, in_dim)
            wide = int(cfg.dim * cfg.projection_ratio)
            layers: list[nn.Module] = [nn.Linear(cfg.dim, wide), nn.GELU()]
            for _ in range(cfg.projection_layers - 2):
                layers += [nn.Linear(wide, wide), nn.GELU()]
            self.proj = nn.Sequential(*layers, nn.Linear(wide, in_dim))

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        if self.grid is not None:
            h, w = self.grid
            if h * w != N:
                raise ValueError(f"decoder grid {self.grid} does not hold {N} tokens")
            x = x.transpose(1, 2).reshape(B, D, h, w)  # (B, N, D) -> (B, D, H, W)
        else:
            x = x.transpose(1, 2)  # (B, N, D) -> (B, D, N)
        for conv, residual in zip(self.convs, self.residual):
            y = conv(x)
            y = F.layer_norm(y.movedim(1, -1), y.shape[1:2]).movedim(-1, 1)  # LN over channels, no affine
            y = F.gelu(y)
            x = x + y if residual else y
        x = x.flatten(2).transpose(1, 2)  # (B, C, ...) -> (B, N, C)
        return self.proj(x)


def fill_masked(visible: Tensor, ids_restore: Tensor, noise_std: float) -> Tensor:
    """Scatter visible tokens back into place, masked slots filled with N(0, noise_std^2) noise.

    visible: (B, N_keep, D); ids_restore: (B, N). Returns (B, N, D).
    """
    B, n_keep, D = visible.shape
    n = ids_restore.shape[1]
    noise = torch.randn(B, n - n_keep, D, device=visible.device, dtype=visible.dtype) * noise_std
    full = torch.cat([visible, noise], dim=1)  # (B, N, D) in [visible, masked] order
    return torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))  # -> original order
