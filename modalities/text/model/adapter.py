"""Text adapter: token embedding + learned positions + embedding layer norm (RoBERTa, Liu et al. 2019; the
data2vec text encoder, data2vec.md §2 "layernorm_embedding", §6.2 Data2VecText layout).

Token ids are embedded, learned absolute positions added, then LayerNorm and dropout; the post-LN transformer
encoder (``encoder.norm_first: false``) follows. Masked ids become ``<mask>`` when a mask is passed (span masking
without corruption); BERT's random/unchanged corruption arrives already applied to the ids (``student_inputs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from modalities.base import Tokens
from modalities.text.data.tokenizer import MASK_ID, NUM_SPECIAL, PAD_ID
from unimim.nn.pos_embed import sincos_1d

EMBED_STD = 0.02  # initial std of the token (and learned position) embeddings, RoBERTa's


@dataclass
class TextAdapterConfig:
    vocab_size: int = 50265    # embedding rows; >= the tokenizer's vocabulary (RoBERTa: 50265)
    max_positions: int = 512   # longest sequence (= data.block_size)
    dropout: float = 0.1       # after the embedding layer norm (RoBERTa 0.1)
    # learned: RoBERTa's trained absolute positions; sincos: a fixed 1-D sin-cos table (Vaswani et al. 2017) scaled
    # to the token embeddings' initial per-channel std, so training cannot grow the position signal; none: no
    # absolute positions (the encoder is then order-free; word order reaches a data2vec 2.0 model through its
    # convolutional decoder only)
    positions: Literal["learned", "sincos", "none"] = "learned"

    def __post_init__(self) -> None:
        if self.vocab_size <= NUM_SPECIAL:
            raise ValueError(f"adapter.vocab_size must exceed the {NUM_SPECIAL} special tokens, got {self.vocab_size}")
        if self.positions not in ("learned", "sincos", "none"):
            raise ValueError(f"adapter.positions must be 'learned', 'sincos' or 'none', got {self.positions!r}")
        if self.max_positions < 2:
            raise ValueError(f"adapter.max_positions must be >= 2, got {self.max_positions}")


class TextAdapter(nn.Module):
    """(B, T) int64 token ids -> Tokens(x (B, T, D), padding_mask (B, T) | None). No prefix tokens: ``<s>`` is an
    ordinary (never masked) token of the sequence."""

    num_prefix_tokens = 0

    def __init__(self, cfg: TextAdapterConfig, *, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, dim, padding_idx=PAD_ID)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.tokens.weight, std=EMBED_STD)
        with torch.no_grad():
            self.tokens.weight[PAD_ID].zero_()
        if cfg.positions == "learned":
            self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, dim))  # (T_max, D)
            nn.init.normal_(self.pos_embed, std=EMBED_STD)
        elif cfg.positions == "none":
            self.pos_embed = None
        else:  # sin-cos channels have rms 1/sqrt(2): rescale them to EMBED_STD
            table = sincos_1d(dim, torch.arange(cfg.max_positions)) * (EMBED_STD * 2**0.5)  # (T_max, D)
            self.register_buffer("pos_embed", table, persistent=False)

    def local(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tokens:
        """The local encoder (token embedding), run once per example: inputs (B, T) ids, padding_mask (B, T) bool
        (True = padding; derived from ``<pad>`` ids when not given) -> Tokens(x (B, T, D), padding_mask)."""
        if inputs.dim() != 2 or inputs.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text inputs must be (B, T) integer token ids, got {tuple(inputs.shape)} {inputs.dtype}")
        T = inputs.shape[1]
        if T > self.cfg.max_positions:
            raise ValueError(f"sequence of {T} tokens exceeds adapter.max_positions={self.cfg.max_positions}")
        if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}) (adapter.vocab_size); "
                             f"got [{int(inputs.min())}, {int(inputs.max())}]")
        if padding_mask is None:
            pad = inputs.eq(PAD_ID)
            padding_mask = pad if bool(pad.any()) else None
        return Tokens(x=self.tokens(inputs), padding_mask=padding_mask)  # (B, T, D)

    def embed_features(self, local: Tokens, mask: Tensor | None = None, *, drop_masked: bool = False) -> Tokens:
        """Token embeddings (B, T, D) -> Tokens for the encoder: masked tokens become ``<mask>`` (zeroed with
        ``drop_masked``: the student drops them; every later step here is per token), + positions, LayerNorm,
        dropout."""
        x = local.x
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} differs from inputs {tuple(x.shape[:2])}")
            fill = x.new_zeros(()) if drop_masked else self.tokens.weight[MASK_ID].to(x.dtype)
            x = torch.where(mask.unsqueeze(-1), fill, x)  # (B, T, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed[: x.shape[1]]
        return Tokens(x=self.drop(self.norm(x)), padding_mask=local.padding_mask)

    def embed(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tokens:
        """inputs: (B, T) ids; mask: (B, T) bool, True = replace the id by ``<mask>``; padding_mask: (B, T) bool,
        True = padding (derived from ``<pad>`` ids when not given). Returns Tokens with x (B, T, D).
        = ``embed_features(local(inputs, padding_mask), mask)``."""
        return self.embed_features(self.local(inputs, padding_mask), mask)
