"""MAE's asymmetric decoder (He et al. 2022, §3 "MAE decoder"): a small transformer over the full patch grid.

The encoder's outputs for the visible patches are projected to the decoder width, a shared learned mask token fills
every masked slot, the sequence is put back in grid order with ``ids_restore``, fixed 2-D sin-cos positions are added
(the cls slot gets the zero position), and ``depth`` pre-LN blocks + LayerNorm + a linear map predict each patch's
``p*p*C`` pixels. Ref: facebookresearch/mae ``models_mae.py::forward_decoder``@efb2a806
(masked-image-modeling.md §1.1); the paper default is 8 blocks x 512 wide, 16 heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unimim.core.masking import gather_tokens
from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.nn.pos_embed import sincos_2d
from unimim.nn.tokens import Tokens


@dataclass
class MAEDecoderConfig:
    dim: int = 512          # decoder width (paper: 512)
    depth: int = 8          # decoder blocks (paper: 8; 1 block still works, §4.1 Table 1a)
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6  # LayerNorm eps (MAE: 1e-6; a converted transformers config may say otherwise)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"method.decoder.depth must be >= 1, got {self.depth}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"method.decoder.dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.dim % 4 != 0:
            raise ValueError(f"method.decoder.dim={self.dim} must be divisible by 4 (2-D sin-cos positions)")


class MAEDecoder(nn.Module):
    """(B, P + K, D_enc) encoder outputs of the prefix + K visible tokens -> (B, N, out_dim) per-patch predictions."""

    def __init__(
        self, cfg: MAEDecoderConfig, *, in_dim: int, grid: tuple[int, int], out_dim: int, num_prefix_tokens: int
    ) -> None:
        super().__init__()
        if num_prefix_tokens not in (0, 1):
            raise ValueError(f"the MAE decoder supports 0 or 1 prefix (cls) token, got {num_prefix_tokens}")
        self.cfg = cfg
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(in_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        table = sincos_2d(cfg.dim, grid)  # (N, d)
        if num_prefix_tokens:
            table = torch.cat([torch.zeros(1, cfg.dim), table])  # the cls slot gets the zero position
        self.register_buffer("pos_table", table.unsqueeze(0), persistent=False)  # (1, P + N, d)
        self.blocks = TransformerEncoder(
            EncoderConfig(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                          qkv_bias=True, norm_first=True, final_norm=True, norm_eps=cfg.norm_eps)
        )
        self.pred = nn.Linear(cfg.dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for layer in (self.embed, self.pred):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, ids_restore: Tensor) -> Tensor:
        """h: (B, P + K, D_enc), visible tokens in the order of ``ids_restore``'s first K entries;
        ids_restore: (B, N) from :class:`unimim.core.masking.MaskInfo`. Returns (B, N, out_dim)."""
        p = self.num_prefix_tokens
        x = self.embed(h)  # (B, P + K, d)
        b, n = ids_restore.shape
        visible = x[:, p:]  # (B, K, d)
        filler = self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)  # (B, N - K, d)
        full = gather_tokens(torch.cat([visible, filler], dim=1), ids_restore)  # (B, N, d) in grid order
        x = torch.cat([x[:, :p], full], dim=1) + self.pos_table.to(x.dtype)  # (B, P + N, d)
        x = self.blocks(Tokens(x=x)).x
        return self.pred(x[:, p:])  # (B, N, out_dim)
