"""iBOT's projection head (DINO head), shared by the cls token and the patch tokens.

Zhou et al. "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022, §3.2 / App. A; Caron et al. (DINO)
2021 §3.1: a 3-layer MLP (D -> hidden -> hidden -> bottleneck, GELU), L2 normalisation of the bottleneck, and a
weight-normalised linear layer to ``out_dim`` prototypes whose norm ``g`` is fixed to 1 when ``norm_last_layer``.
Ref: bytedance/ibot models/head.py ``DINOHead`` / ``iBOTHead`` (``shared_head=True``)@da316d82.
The weight norm is written out (W = g * v / ||v||, per output row) instead of ``torch.nn.utils.weight_norm``, so the
head deep-copies cleanly into the EMA teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class HeadConfig:
    hidden: int = 2048
    bottleneck: int = 256
    out_dim: int = 8192           # K prototypes (iBOT ViT-S/B: 8192)
    norm_last_layer: bool = True  # fix g = 1 (iBOT ViT-S recipe: false, i.e. g is learned)

    def __post_init__(self) -> None:
        if min(self.hidden, self.bottleneck, self.out_dim) < 1:
            raise ValueError("method.head sizes must be positive")


class ProjectionHead(nn.Module):
    """(..., D) -> (..., out_dim) prototype scores."""

    def __init__(self, dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
            nn.Linear(cfg.hidden, cfg.bottleneck),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.weight_v = nn.Parameter(torch.empty(cfg.out_dim, cfg.bottleneck))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = None if cfg.norm_last_layer else nn.Parameter(torch.ones(cfg.out_dim, 1))

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        """``freeze_last_layer``: no gradient reaches the prototypes (iBOT freezes them in the first epoch)."""
        z = F.normalize(self.mlp(x), dim=-1)  # (..., bottleneck), unit norm
        v, g = self.weight_v, self.weight_g
        if freeze_last_layer:
            v = v.detach()
            g = None if g is None else g.detach()
        w = F.normalize(v, dim=1)  # (K, bottleneck), unit rows
        if g is not None:
            w = w * g
        return F.linear(z, w.to(z.dtype))  # (..., bottleneck) -> (..., K)
