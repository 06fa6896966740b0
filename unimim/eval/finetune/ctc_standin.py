"""Greedy CTC decoding and edit-distance error rates: a minimal stand-in with the interface of
``unimim.eval.ctc`` (written with the speech tasks), used only while that module is not present.

greedy_decode: the best symbol of every frame, repeats merged, blanks (index 0) dropped (Graves et al. 2006, §3.2
"best path decoding"). error_rate: the Levenshtein distance summed over examples, and the reference length summed
(WER over word ids, CER over character ids).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def greedy_decode(logits: Tensor, lengths: Tensor | None = None) -> list[list[int]]:
    """(B, T, V) logits (or log-probabilities), (B,) valid frames -> B symbol sequences."""
    best = logits.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for b in range(best.shape[0]):
        n = best.shape[1] if lengths is None else int(lengths[b])
        seq, prev = [], None
        for s in best[b, :n].tolist():
            if s != prev and s != 0:
                seq.append(s)
            prev = s
        out.append(seq)
    return out


def edit_distance(ref: Sequence[int], hyp: Sequence[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions of cost 1)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def error_rate(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(edit errors summed over examples, reference symbols summed)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)), sum(len(r) for r in refs)
