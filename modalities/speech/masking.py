"""Frame masks for speech, made per example in DataLoader workers and equalised per batch in the collate.

* ``span`` -- wav2vec 2.0 / data2vec 1.0 span masking with the semantics of fairseq's ``compute_mask_indices``
  (data2vec.md §5.1): ``num = max(min_masks, int(prob * n / length + u))``, u ~ U[0, 1) (probabilistic rounding),
  ``num`` distinct span starts drawn uniformly from ``[0, n - length)``, each expanded to ``length`` frames, spans
  clipped to the row and overlaps merged; masking a whole row is an error. With prob 0.65, length 10 about 45 % of
  the frames end up masked (0.4465 +- 0.019 for T = 500, B = 8 in the reference).
* ``block`` -- data2vec 2.0's 1-D block mask (``compute_block_mask_1d``, data2vec.md §5.3 last paragraph):
  ``int(n * (prob + adjust) / length)`` block centres drawn with replacement, a block of ``length`` frames around
  each (clamped to the row), then random frames unset or set until exactly ``int(n * prob)`` are masked.

Padding-aware: a mask is drawn on an example's own ``n`` frames, before the batch is padded, so padded frames are
never masked. ``require_same_masks`` (equal mask counts across the batch, needed by the data2vec 2.0 student and
used by data2vec 1.0) is applied by :func:`equalise_counts` in the collate: rows with more masked frames than the
batch minimum keep a random subset (as in the reference, this can split spans).

Every draw uses the ``numpy.random.Generator`` it is given, so masks are a pure function of the per-example seed.

A deliberate difference: the span count (its ``u``) is drawn per row. The reference draws it per row only when the
batch is padded and once for the whole batch otherwise (its default ``batch_mode: crop``); drawing it per example
keeps a mask a function of that example alone (made in workers, independent of the batch). With equal crops the
rows' counts then differ by at most one span before :func:`equalise_counts` cuts them to the minimum, which lowers the
masked fraction by well under a span's share (< 10 frames of a 500-frame row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass
class SpeechMaskConfig:
    """kind: span (data2vec 1.0) | block (data2vec 2.0); prob: mask_prob (1.0: 0.65, 2.0: 0.5); length: span /
    block length in frames (10 / 5); min_masks: span only (reference 1); adjust: block only, mask_prob_adjust
    (2.0: 0.05); num_masks: masks per example (2.0 multi-mask: 8), > 1 gives (R, N) masks."""

    kind: Literal["span", "block"] = "span"
    prob: float = 0.65
    length: int = 10
    min_masks: int = 1
    adjust: float = 0.05
    num_masks: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("span", "block"):
            raise ValueError(f"masking.kind must be 'span' or 'block', got {self.kind!r}")
        if not 0.0 < self.prob < 1.0:
            raise ValueError(f"masking.prob must be in (0, 1), got {self.prob}")
        if self.length < 1 or self.min_masks < 0 or self.num_masks < 1:
            raise ValueError("masking.length and masking.num_masks must be >= 1 and masking.min_masks >= 0")
        if self.adjust < 0:
            raise ValueError(f"masking.adjust must be >= 0, got {self.adjust}")


def span_mask(n: int, rng: np.random.Generator, *, prob: float, length: int, min_masks: int = 1) -> np.ndarray:
    """One row of fairseq ``compute_mask_indices`` (static lengths, overlaps allowed): (n,) bool, True = masked."""
    num = max(min_masks, int(prob * n / float(length) + rng.random()))
    min_len = length
    if n - min_len <= num:
        min_len = n - num - 1
    if n - min_len < num or num < 0:
        raise ValueError(f"cannot place {num} spans of {length} frames in a row of {n} frames; the utterance is "
                         "too short for this mask (raise data.min_samples)")
    starts = rng.choice(n - min_len, num, replace=False)  # distinct starts in [0, n - min_len)
    idx = (starts[:, None] + np.arange(length)[None, :]).reshape(-1)  # (num, length) -> (num * length,)
    idx = np.unique(idx[idx < n])
    if len(idx) >= n:
        raise ValueError(f"span masking covered all {n} frames of a row; lower masking.prob or masking.length")
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def block_mask(n: int, rng: np.random.Generator, *, prob: float, length: int, adjust: float) -> np.ndarray:
    """data2vec 2.0 ``compute_block_mask_1d`` (not inverted): exactly ``int(n * prob)`` frames masked. (n,) bool."""
    mask = np.zeros(n, dtype=bool)
    centres = rng.integers(0, n, size=int(n * (prob + adjust) / length))  # with replacement
    offsets = np.arange(length) - length // 2
    idx = np.clip(centres[:, None] + offsets[None, :], 0, n - 1).reshape(-1)  # (centres, length) -> (centres*length,)
    mask[idx] = True
    target = int(n * prob)
    on = np.flatnonzero(mask)
    if len(on) > target:
        mask[rng.choice(on, len(on) - target, replace=False)] = False
    elif len(on) < target:
        off = np.flatnonzero(~mask)
        mask[rng.choice(off, target - len(on), replace=False)] = True
    return mask


class SpeechMaskGenerator:
    """One frame mask of an utterance (the ``MaskGenerator`` protocol): ``gen(rng, n) -> (n,) bool``."""

    def __init__(self, cfg: SpeechMaskConfig) -> None:
        self.cfg = cfg

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray:
        n = num_tokens
        if n is None or maskable is not None:
            raise ValueError("speech masks are drawn on an utterance's own frames: pass num_tokens, no maskable")
        if n < 2:
            raise ValueError(f"cannot mask a row of {n} frame(s)")
        c = self.cfg
        if c.kind == "span":
            return span_mask(n, rng, prob=c.prob, length=c.length, min_masks=c.min_masks)
        return block_mask(n, rng, prob=c.prob, length=c.length, adjust=c.adjust)


def equalise_counts(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``require_same_masks``: every row keeps a random subset of its masked frames of the batch's minimum size.

    masks: (B, N) bool (padded rows carry False beyond their frames). Returns a new (B, N) bool array.
    """
    masks = masks.copy()
    counts = masks.sum(axis=1)
    target = int(counts.min())
    for i in np.flatnonzero(counts > target):
        on = np.flatnonzero(masks[i])
        masks[i, rng.choice(on, len(on) - target, replace=False)] = False
    return masks
