"""A timm Swin Transformer (Liu et al. 2021) as a masked-image backbone: the mask token goes in after the patch
embedding, before the first stage, so a hierarchical model with windowed attention and patch merging can be
pretrained by SimMIM (Xie et al. 2022, §3.1). MAE cannot do this: dropping patches breaks the window grid.

Ref: microsoft/SimMIM ``models/simmim.py::SwinTransformerForSimMIM``@d3e29bca (masked-image-modeling.md §1.2): the
substitution is ``x * (1 - w) + mask_token * w`` on the (normed) patch embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SwinConfig:
    embed_dim: int = 128                       # Swin-B: 128
    depths: tuple[int, ...] = (2, 2, 18, 2)    # blocks per stage (Swin-B)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 6                       # SimMIM pretrains Swin at 192 px with window 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(f"swin.depths {self.depths} and swin.num_heads {self.num_heads} need the same length")


class SwinBackbone(nn.Module):
    """(B, C, S, S) images [+ (B, N) patch mask] -> (B, N_out, F) final-stage tokens, N_out = (S / stride)^2.

    ``stride = patch_size * 2^(stages - 1)`` pixels per output token; ``num_features`` = F.
    """

    num_prefix_tokens = 0

    def __init__(self, cfg: SwinConfig, *, image_size: int, patch_size: int, in_chans: int) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.cfg = cfg
        self.stride = patch_size * 2 ** (len(cfg.depths) - 1)
        if image_size % self.stride != 0:
            raise ValueError(f"swin: image_size {image_size} must be divisible by the output stride {self.stride} "
                             f"(patch {patch_size} x 2^{len(cfg.depths) - 1} merges)")
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.out_grid = (image_size // self.stride, image_size // self.stride)
        self.model = SwinTransformer(
            img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, embed_dim=cfg.embed_dim,
            depths=cfg.depths, num_heads=cfg.num_heads, window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=cfg.drop_path,
        )
        self.num_features = int(self.model.num_features)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, cfg.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """images (B, C, S, S), mask (B, N) bool on the patch grid (True = masked) -> (B, N_out, F)."""
        x = self.model.patch_embed(images)  # (B, h, w, E), normed patch embeddings
        if mask is not None:
            b, h, w, _ = x.shape
            if mask.shape != (b, h * w):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the Swin patch grid {(b, h * w)}")
            m = mask.reshape(b, h, w, 1).to(x.dtype)  # (B, N) -> (B, h, w, 1)
            x = x * (1 - m) + self.mask_token.to(x.dtype) * m
        x = self.model.norm(self.model.layers(x))  # (B, h', w', F)
        return x.flatten(1, 2)  # (B, h', w', F) -> (B, N_out, F)
