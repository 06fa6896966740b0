"""What an encoder returns: its final output, every block output and every FFN output (the data2vec targets).

Its own module so that both encoder backends (:mod:`unimim.nn.encoder`, :mod:`unimim.nn.timm_encoder`) return it
without importing each other; ``unimim.nn.encoder`` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EncoderOutput:
    """x: (B, T, D) last layer (after the final norm, if any); layers / ffn: L tensors (B, T, D) each,
    the block outputs and the FFN outputs before the residual."""

    x: Tensor
    layers: list[Tensor]
    ffn: list[Tensor]
