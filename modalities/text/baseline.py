"""The raw-input baseline of text: TF-IDF of the BPE token ids, with scikit-learn's ``TfidfVectorizer`` defaults.

A document is one example's token ids without padding and without the tokenizer's five reserved ids (``<s>``,
``<pad>``, ``</s>``, ``<unk>``, ``<mask>``: :mod:`modalities.text.data.tokenizer`). Term frequency: the raw count;
the vocabulary: the ids that occur in at least ``min_df`` (2) training documents; idf: the smooth
``ln((1 + N) / (1 + df)) + 1`` of the N training documents; rows l2-normalised (an example without any vocabulary
id stays all zeros). What scikit-learn computes for
``TfidfVectorizer(analyzer=lambda ids: ids, min_df=2)`` on the ids as strings, up to the order of the columns.

Memory: a batch's counts are (B, vocab_size) float32 (256 x 50K ids: 51 MB), a split's features a dense (N, V)
float32 matrix of its V vocabulary ids: 4 N V bytes (10,000 examples x 20,000 ids: 800 MB), kept on the CPU and on
the probes' device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from modalities.text.data.tokenizer import NUM_SPECIAL
from unimim.core.batch import Batch


class TfidfFeatures:
    """TF-IDF of token ids (see the module docstring): a batch's (B, T) ids with their (B, T) padding mask ->
    (B, V) float32, l2-normalised rows; fitted on the training split (vocabulary and idf). Not dense: the baseline
    does not standardise it."""

    name = "TF-IDF of BPE tokens"
    dense = False

    def __init__(self, vocab_size: int, *, special_ids: Sequence[int] = tuple(range(NUM_SPECIAL)),
                 min_df: int = 2) -> None:
        if vocab_size < 1 or min_df < 1:
            raise ValueError(f"TF-IDF needs vocab_size >= 1 and min_df >= 1, got {vocab_size} and {min_df}")
        self.vocab_size, self.min_df = vocab_size, min_df
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.columns: Tensor | None = None  # (V,) the vocabulary's token ids, ascending
        self.idf: Tensor | None = None  # (V,) float32

    def counts(self, batch: Batch) -> Tensor:
        """(B, T) token ids -> (B, vocab_size) float32 raw counts of the non-special, non-padding ids."""
        ids = batch.inputs
        if ids is None or ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"TF-IDF needs (B, T) integer token ids, got "
                             f"{None if ids is None else (tuple(ids.shape), ids.dtype)}")
        ids = ids.long()
        valid = ~torch.isin(ids, self.special_ids.to(ids.device))  # (B, T)
        if batch.padding_mask is not None:
            valid &= ~batch.padding_mask.bool()
        bad = valid & ((ids < 0) | (ids >= self.vocab_size))
        if bool(bad.any()):
            raise ValueError(f"token id {int(ids[bad][0])} lies outside the vocabulary [0, {self.vocab_size})")
        out = torch.zeros(ids.shape[0], self.vocab_size, device=ids.device)  # (B, vocab_size)
        return out.scatter_add_(1, ids.clamp(0, self.vocab_size - 1), valid.float())

    @torch.no_grad()
    def fit(self, batches: Iterable[Batch]) -> None:
        df, n = None, 0
        for batch in batches:
            present = (self.counts(batch) > 0).sum(dim=0)  # (vocab_size,) documents holding each id
            df = present if df is None else df + present
            n += batch.size
        if df is None:
            raise ValueError("TF-IDF: the training split yielded no batches")
        columns = torch.nonzero(df >= self.min_df).flatten()  # (V,)
        if columns.numel() == 0:
            raise ValueError(f"TF-IDF: no token id occurs in {self.min_df} or more of the {n} training examples")
        self.columns = columns
        self.idf = (torch.log((1.0 + n) / (1.0 + df[columns].double())) + 1.0).float()  # (V,)

    @torch.no_grad()
    def transform(self, batch: Batch) -> Tensor:
        if self.columns is None or self.idf is None:
            raise ValueError("TF-IDF: fit() on the training split before transform()")
        counts = self.counts(batch)  # (B, vocab_size)
        columns, idf = self.columns.to(counts.device), self.idf.to(counts.device)
        tfidf = counts.index_select(1, columns) * idf  # (B, vocab_size) -> (B, V)
        return F.normalize(tfidf, dim=1)  # zero rows stay zero


def tfidf_baseline(cfg: Any) -> TfidfFeatures:
    """The text modality's ``ModalitySpec.raw_baseline``: TF-IDF over the adapter's vocabulary of token ids."""
    return TfidfFeatures(cfg.adapter.vocab_size)
