"""Masks: the generator protocol every modality follows, R masks per example, and the bookkeeping shared by
student, loss and decoder.

A mask is drawn once per example (in DataLoader workers, by a modality's :class:`MaskGenerator`; :func:`draw_masks`
draws R of them) and turned into a :class:`MaskInfo` once per batch; everything downstream reads the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@runtime_checkable
class MaskGenerator(Protocol):
    """Draws one mask of an example: ``gen(rng, num_tokens=None, maskable=None) -> (N,) bool``, ``True`` = masked.

    ``num_tokens`` is the example's token count (speech frames, text tokens); ``None`` takes the generator's own
    fixed count (an image's patch grid). ``maskable`` (N,) bool marks the positions that may be masked (``None``:
    all; text excludes special tokens). Every draw consumes randomness only from ``rng``, so a mask is a pure
    function of the per-example seed.
    """

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray: ...


def draw_masks(generator: MaskGenerator, rng: np.random.Generator, num_masks: int, num_tokens: int | None = None,
               maskable: np.ndarray | None = None) -> np.ndarray:
    """R = ``num_masks`` independent masks of one example, drawn one after another from ``rng``: (R, N) bool."""
    if num_masks < 1:
        raise ValueError(f"num_masks must be >= 1, got {num_masks}")
    return np.stack([generator(rng, num_tokens, maskable) for _ in range(num_masks)])  # R x (N,) -> (R, N)


@dataclass
class MaskInfo:
    """A token mask and the index maps of its visible subset.

    Attributes:
        mask: (B, T) bool, ``True`` = masked.
        ids_keep: (B, T_keep) long, indices of visible tokens in ascending position order, or ``None``
            when rows have different numbers of visible tokens (then only the full-sequence path works).
        ids_restore: (B, T) long, inverse permutation of ``argsort(mask)``: scattering
            ``cat([visible, masked])`` with it restores the original order.
    """

    mask: Tensor
    ids_keep: Tensor | None
    ids_restore: Tensor

    @classmethod
    def from_mask(cls, mask: Tensor) -> MaskInfo:
        """Build from a (B, T) bool mask. ``ids_keep`` is set only when every row keeps the same count."""
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a (B, T) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
        # stable sort puts visible (False) first, each group in position order
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # (B, T)
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, T)
        keep_counts = (~mask).sum(dim=1)
        ids_keep = None
        if mask.shape[0] > 0 and bool((keep_counts == keep_counts[0]).all()):
            ids_keep = ids_shuffle[:, : int(keep_counts[0])]  # (B, T_keep)
        return cls(mask=mask, ids_keep=ids_keep, ids_restore=ids_restore)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Select tokens per row. x: (B, T, D), ids: (B, T') -> (B, T', D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def prepend_unmasked(mask: Tensor, num_prefix: int) -> Tensor:
    """Extend a (B, N) patch/frame mask with ``num_prefix`` never-masked prefix tokens -> (B, T)."""
    if num_prefix == 0:
        return mask
    prefix = torch.zeros(mask.shape[0], num_prefix, dtype=torch.bool, device=mask.device)
    return torch.cat([prefix, mask], dim=1)  # (B, N) -> (B, T)
