"""Text masks, made per sequence in DataLoader workers (data2vec.md §5.4).

* ``bert`` -- fairseq ``MaskTokensDataset`` semantics (BERT, Devlin et al. 2019, §3.1 "Task #1: Masked LM"):
  ``num = int(prob * n / span_length + u)`` span starts drawn without replacement, each expanded to
  ``span_length`` tokens; of the selected tokens a fraction ``random_token_prob`` becomes a uniformly drawn
  non-special token, ``leave_unmasked_prob`` stays unchanged, the rest becomes ``<mask>``. BERT is
  (0.15, 1, 0.1, 0.1); the reference's shipped data2vec text config is span masking (0.35, 4, 0, 0).
  The corruption is applied to the ids (``student_inputs``); every selected token is a prediction target,
  including the random and unchanged ones (the reference regresses only the ``<mask>`` ones, data2vec.md §10.2).
* ``random`` -- data2vec 2.0 text (fairseq data2vec2 ``random_masking``, ``mask_length: 1``): exactly
  ``int(prob * L)`` of the L positions, no corruption (the 2.0 student drops them). L counts every position, as in
  the reference, so that equal-length blocks get equal counts (2.0 needs them); the tokens are drawn among the
  non-special ones.

Special and padding tokens are never selected; for ``bert`` the ``n`` above counts only the other tokens (the
reference counts the whole sequence). Everything is drawn from the ``numpy`` generator it is given, so masks are a
function of (seed, epoch, index) (:mod:`unimim.train.data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from modalities.text.data.tokenizer import MASK_ID, NUM_SPECIAL


@dataclass
class TextMaskConfig:
    kind: Literal["bert", "random"] = "bert"
    prob: float = 0.15                # fraction of (non-special) tokens selected
    span_length: int = 1              # bert: tokens per selected span (1 = BERT, 4 = the reference's config)
    random_token_prob: float = 0.1    # bert: of the selected tokens, replaced by a random token
    leave_unmasked_prob: float = 0.1  # bert: of the selected tokens, left unchanged
    num_masks: int = 1                # masks per sequence (data2vec 2.0 multi-mask: 8 for text)

    def __post_init__(self) -> None:
        if self.kind not in ("bert", "random"):
            raise ValueError(f"masking.kind must be 'bert' or 'random', got {self.kind!r}")
        if not 0.0 < self.prob < 1.0:
            raise ValueError(f"masking.prob must be in (0, 1), got {self.prob}")
        if self.span_length < 1:
            raise ValueError(f"masking.span_length must be >= 1, got {self.span_length}")
        for name in ("random_token_prob", "leave_unmasked_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"masking.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.random_token_prob + self.leave_unmasked_prob > 1.0:
            raise ValueError("masking.random_token_prob + masking.leave_unmasked_prob must be <= 1")
        if self.kind == "random" and (self.span_length != 1 or self.random_token_prob or self.leave_unmasked_prob):
            raise ValueError("masking.kind=random masks single tokens without corruption: set span_length=1, "
                             "random_token_prob=0 and leave_unmasked_prob=0")
        if self.num_masks < 1:
            raise ValueError(f"masking.num_masks must be >= 1, got {self.num_masks}")


class TextMaskGenerator:
    """The token mask of one sequence (the ``MaskGenerator`` protocol): ``gen(rng, n, maskable) -> (n,) bool``;
    ``maskable`` (n,) bool marks the non-special tokens (``None``: all)."""

    def __init__(self, cfg: TextMaskConfig) -> None:
        self.cfg = cfg

    def __call__(self, rng: np.random.Generator, num_tokens: int | None = None,
                 maskable: np.ndarray | None = None) -> np.ndarray:
        if num_tokens is None:
            raise ValueError("text masks are drawn on a sequence's own tokens: pass num_tokens")
        cfg = self.cfg
        mask = np.zeros(num_tokens, dtype=bool)
        candidates = np.arange(num_tokens) if maskable is None else np.flatnonzero(maskable)  # selectable positions
        n = len(candidates)
        if n == 0:
            return mask
        if cfg.kind == "random":
            mask[rng.choice(candidates, min(n, int(cfg.prob * num_tokens)), replace=False)] = True
            return mask
        num = int(cfg.prob * n / cfg.span_length + rng.random())
        num = min(num, n)
        starts = rng.choice(n, num, replace=False)
        picked = (starts[:, None] + np.arange(cfg.span_length)).ravel()  # (num * span,) indices into `candidates`
        picked = np.unique(picked[picked < n])
        mask[candidates[picked]] = True
        return mask


class TextMasker:
    """Mask and corruption of one sequence of token ids: ``masker(ids, rng) -> (mask (N,) bool, student ids (N,)
    int64)``. The mask comes from :class:`TextMaskGenerator`; :meth:`corrupt` applies BERT's 80/10/10 to the
    selected tokens (``bert``; ``random`` leaves the ids as they are)."""

    def __init__(self, cfg: TextMaskConfig, vocab_size: int) -> None:
        if vocab_size <= NUM_SPECIAL:
            raise ValueError(f"vocab_size {vocab_size} leaves no non-special token to draw")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.generator = TextMaskGenerator(cfg)

    @property
    def corrupts(self) -> bool:
        return self.cfg.kind == "bert"

    @staticmethod
    def maskable(ids: np.ndarray) -> np.ndarray:
        """(N,) bool: the tokens that may be selected (special and padding tokens never are)."""
        return np.asarray(ids) >= NUM_SPECIAL

    def corrupt(self, ids: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The student's ids: selected tokens become ``<mask>``, a random token or stay (``bert``)."""
        student = np.asarray(ids, dtype=np.int64).copy()
        if not self.corrupts:
            return student
        sel = np.flatnonzero(mask)
        if len(sel) == 0:
            return student
        cfg = self.cfg
        other = cfg.random_token_prob + cfg.leave_unmasked_prob
        if other > 0:
            rand_or_keep = rng.random(len(sel)) < other
            keep = rand_or_keep & (rng.random(len(sel)) < cfg.leave_unmasked_prob / other)
            rand = rand_or_keep & ~keep
            student[sel[~rand_or_keep]] = MASK_ID
            student[sel[rand]] = rng.integers(NUM_SPECIAL, self.vocab_size, int(rand.sum()))
        else:
            student[sel] = MASK_ID
        return student

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        mask = self.generator(rng, len(ids), self.maskable(ids))
        return mask, self.corrupt(ids, mask, rng)
