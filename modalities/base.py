"""The adapter contract: raw input of one modality -> embedded tokens.

An adapter embeds raw input and knows the geometry of its tokens (how many prefix tokens, how
positions are encoded); it holds no training logic. Masks are made by the modality's mask
generator in DataLoader workers and arrive in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from unimim.core.masking import gather_tokens


@dataclass
class Tokens:
    """Embedded tokens, positions already applied.

    Attributes:
        x: (B, T, D) tokens, prefix tokens (e.g. cls) first.
        padding_mask: (B, T) bool, ``True`` = padding; ``None`` when nothing is padded.
        attn_bias: (1 | B, H, T, T) additive attention bias (e.g. shared relative position bias) or ``None``.
    """

    x: Tensor
    padding_mask: Tensor | None = None
    attn_bias: Tensor | None = None

    def select(self, ids: Tensor) -> Tokens:
        """Keep tokens ``ids`` (B, T') of every row; the bias is gathered on both token axes."""
        x = gather_tokens(self.x, ids)  # (B, T, D) -> (B, T', D)
        pad = None if self.padding_mask is None else torch.gather(self.padding_mask, 1, ids)  # (B, T')
        bias = None
        if self.attn_bias is not None:
            b, h = ids.shape[0], self.attn_bias.shape[1]
            full = self.attn_bias.expand(b, h, -1, -1)  # (B, H, T, T)
            rows = ids[:, None, :, None].expand(b, h, ids.shape[1], full.shape[-1])
            bias = torch.gather(full, 2, rows)  # (B, H, T', T)
            cols = ids[:, None, None, :].expand(b, h, ids.shape[1], ids.shape[1])
            bias = torch.gather(bias, 3, cols)  # (B, H, T', T')
        return Tokens(x=x, padding_mask=pad, attn_bias=bias)


class Adapter(Protocol):
    """What the core needs from a modality adapter (an ``nn.Module``)."""

    num_prefix_tokens: int  # tokens before the patches/frames (cls), never masked

    def embed(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tokens:
        """Embed raw input. ``mask`` (B, N) bool marks patches/frames whose embedding is replaced by the
        learned mask token before positions are added; ``padding_mask`` is input-level padding."""
        ...

    def token_padding_mask(self, padding_mask: Tensor | None) -> Tensor | None:
        """Map an input-level padding mask to the (B, N) token level (``None`` passes through)."""
        ...


AdapterModule = nn.Module  # adapters are nn.Modules implementing :class:`Adapter`


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the core needs to run one modality; one entry of ``unimim.registry.MODALITIES``.

    Attributes:
        adapter_config / data_config / mask_config: the dataclasses behind the recipe's ``adapter``, ``data`` and
            ``masking`` sections.
        build_adapter(adapter_cfg, encoder_cfg) -> adapter module.
        build_pretrain_source(data_cfg, mask_cfg, adapter_cfg) -> an ExampleSource (``example(i, rng) -> dict``).
        build_eval_sets(data_cfg, adapter_cfg) -> (train, test) datasets of (inputs, label) for probes.
        collate: batch collation (None = torch's default).
    """

    adapter_config: type
    data_config: type
    mask_config: type
    build_adapter: Callable[[Any, Any], nn.Module]
    build_pretrain_source: Callable[[Any, Any, Any], Any]
    build_eval_sets: Callable[[Any, Any], tuple[Any, Any]]
    collate: Callable | None = None
