"""Transformer encoder returning every layer's block output and FFN output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from unimim.nn.block import Block
from unimim.nn.encoder_output import EncoderOutput
from unimim.nn.tokens import Tokens


@dataclass
class EncoderConfig:
    dim: int = 768               # width D
    depth: int = 12              # number of blocks L
    num_heads: int = 12          # H
    mlp_ratio: float = 4.0       # FFN hidden = mlp_ratio * D
    qkv_bias: bool | str = True  # True | False | "qv" (BEiT: bias on q and v only)
    norm_first: bool = True      # pre-LN (ViT/BEiT) or post-LN (BERT/wav2vec 2.0/data2vec speech+text)
    final_norm: bool = True      # LayerNorm after the last block (pre-LN models)
    layer_scale_init: float | None = None  # BEiT/data2vec-vision: 0.1 (B pretrain), 1e-5 (L); None = off
    drop_path: float = 0.0       # stochastic depth, linearly increasing to this value at the last block
    dropout: float = 0.0
    attn_dropout: float = 0.0
    # dropout after the FFN activation; None = encoder.dropout (timm ViT); fairseq speech/text: activation_dropout 0
    act_dropout: float | None = None
    norm_eps: float = 1e-6       # 1e-6 ViT/BEiT, 1e-5 fairseq speech/text
    init_std: float = 0.02       # truncated-normal std for Linear weights
    grad_checkpointing: bool = False  # recompute each block in the backward pass: less activation memory, ~1/3 more
                                      # compute (benchmarks/peer_table.py measures the trade)
    # unimim: the blocks above (unimim.nn.block); timm: the blocks of timm.create_model(timm_model, pretrained=False,
    # **timm_kwargs), behind the same interface (unimim.nn.timm_encoder: what is kept, what must agree, what is refused)
    backend: Literal["unimim", "timm"] = "unimim"
    timm_model: str | None = None  # a timm VisionTransformer name, e.g. vit_small_patch16_224 (backend: timm)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # more create_model arguments (backend: timm)
    # model: the timm model keeps its own width / depth / heads, which must equal dim / depth / num_heads;
    # encoder: dim / depth / num_heads are passed to timm as embed_dim / depth / num_heads
    timm_size: Literal["model", "encoder"] = "model"

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"encoder.{name} must be >= 1, got {getattr(self, name)}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"encoder.mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("drop_path", "dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"encoder.{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.act_dropout is not None and not 0 <= self.act_dropout < 1:
            raise ValueError(f"encoder.act_dropout must lie in [0, 1) or be null, got {self.act_dropout}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"encoder.dim={self.dim} must be divisible by encoder.num_heads={self.num_heads}")
        if self.backend == "timm":
            from unimim.nn.timm_encoder import check_timm_config  # timm is imported only for this backend

            check_timm_config(self)
        elif self.timm_model is not None or self.timm_kwargs or self.timm_size != "model":
            raise ValueError("encoder.timm_model / timm_kwargs / timm_size apply to encoder.backend: timm "
                             f"(backend is {self.backend!r})")


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """The encoder of ``cfg.backend``: :class:`TransformerEncoder` (unimim) or
    :class:`~unimim.nn.timm_encoder.TimmEncoder` (timm); both map Tokens to an :class:`EncoderOutput`."""
    if cfg.backend == "timm":
        from unimim.nn.timm_encoder import TimmEncoder

        return TimmEncoder(cfg)
    return TransformerEncoder(cfg)


class TransformerEncoder(nn.Module):
    """A stack of :class:`Block` s over :class:`Tokens`.

    It runs on whatever tokens it is given: a full sequence with mask tokens substituted (data2vec 1.0,
    BEiT, SimMIM) or the visible subset only (data2vec 2.0, MAE: ``tokens.select(mask_info.ids_keep)``).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                norm_first=cfg.norm_first,
                layer_scale_init=cfg.layer_scale_init,
                drop_path=rate,
                dropout=cfg.dropout,
                attn_dropout=cfg.attn_dropout,
                act_dropout=cfg.act_dropout,
                norm_eps=cfg.norm_eps,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=self.cfg.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, tokens: Tokens) -> EncoderOutput:
        """tokens.x: (B, T, D) -> EncoderOutput with x (B, T, D) and L per-layer tensors (B, T, D)."""
        x = tokens.x
        layers, ffn = [], []
        recompute = self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # only the block inputs are kept; the RNG state is replayed (dropout, drop path)
                x, f = checkpoint(block, x, tokens.padding_mask, tokens.attn_bias, use_reentrant=False)
            else:
                x, f = block(x, tokens.padding_mask, tokens.attn_bias)
            layers.append(x)
            ffn.append(f)
        return EncoderOutput(x=self.norm(x), layers=layers, ffn=ffn)
