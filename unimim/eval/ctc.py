"""CTC evaluation: greedy decoding, edit distances, word and character error rates, and the letter vocabulary.

* :func:`greedy_decode` -- best-path decoding (Graves et al. 2006, §3.2 "best path decoding"): the argmax symbol of
  every frame, repeats collapsed, blanks dropped; what fairseq's ``decoding.type=viterbi`` reports as the raw
  (no language model) word error rate of wav2vec 2.0 / data2vec.
* :func:`error_rate` -- Levenshtein distance (unit costs for substitution, insertion, deletion) summed over pairs of
  token sequences, with the total reference length: ``errors / total`` is the error rate.
* :func:`wer` / :func:`cer` -- word and character error rates of texts (whitespace-split words; characters of the
  space-joined words, so a missing space counts as one error, as fairseq's letter-unit error counts ``|``).
* :class:`LetterVocab` -- fairseq's letter dictionary for LibriSpeech (``dict.ltr.txt``: the 26 letters, the
  apostrophe and ``|`` as the word boundary), with the CTC blank at index 0; ids <-> text, ``|`` <-> space.

Nothing here knows a modality: the logits come from whatever head the fine-tuning core put on the encoder.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BLANK = "<blank>"
WORD_BOUNDARY = "|"
LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


def greedy_decode(logits: Tensor, lengths: Tensor | None = None, *, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding.

    Args:
        logits: (B, T, V) scores (logits or log-probabilities: only their argmax is used).
        lengths: (B,) valid frames per row (the rest is padding), or None when every row has T frames.
        blank: the blank's index.

    Returns:
        B lists of symbol ids: per row, the argmax path over its first ``lengths[b]`` frames with consecutive repeats
        merged and blanks removed (``a a - a`` -> ``a a``: a blank separates two real repeats).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got {tuple(logits.shape)}")
    b, t, _ = logits.shape
    if lengths is None:
        lengths = torch.full((b,), t, dtype=torch.long)
    lengths = torch.as_tensor(lengths).long().cpu()
    if lengths.shape != (b,) or bool((lengths < 0).any()) or bool((lengths > t).any()):
        raise ValueError(f"lengths must be (B,) = ({b},) values in [0, {t}], got {lengths.tolist()}")
    best = logits.argmax(dim=-1).cpu()  # (B, T, V) -> (B, T)
    out = []
    for row, n in zip(best, lengths.tolist()):
        path = torch.unique_consecutive(row[:n])  # merge repeats
        out.append([int(s) for s in path if int(s) != blank])
    return out


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """Levenshtein distance between two token sequences (unit costs), by the Wagner-Fischer recurrence one
    reference token at a time; the insertion term of a row is a running minimum, so each row is a few numpy
    operations: d[j] = min(e[j], d[j-1] + 1) = j + min_{k<=j} (e[k] - k)."""
    if len(ref) == 0 or len(hyp) == 0:
        return max(len(ref), len(hyp))
    ids: dict[Hashable, int] = {}
    r = np.array([ids.setdefault(x, len(ids)) for x in ref])
    h = np.array([ids.setdefault(x, len(ids)) for x in hyp])
    cols = np.arange(len(h) + 1)
    prev = cols.copy()  # distances from the empty reference prefix
    for i, token in enumerate(r, start=1):
        e = np.empty_like(prev)
        e[0] = i
        e[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (h != token))  # deletion, substitution / match
        prev = cols + np.minimum.accumulate(e - cols)  # insertions
    return int(prev[-1])


def error_rate(refs: Sequence[Sequence[Hashable]], hyps: Sequence[Sequence[Hashable]]) -> tuple[int, int]:
    """(total edit distance, total reference length) over pairs of token sequences; ``errors / total`` is the
    error rate (it exceeds 1 when hypotheses insert more than the references hold)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    return errors, sum(len(r) for r in refs)


def _rate(errors: int, total: int, unit: str) -> float:
    if total == 0:
        raise ValueError(f"the references hold no {unit}: the error rate is undefined")
    return errors / total


def wer(ref_texts: Sequence[str], hyp_texts: Sequence[str]) -> float:
    """Word error rate: word-level edit distance / reference words (words split on whitespace)."""
    return _rate(*error_rate([r.split() for r in ref_texts], [h.split() for h in hyp_texts]), "words")


def cer(ref_texts: Sequence[str], hyp_texts: Sequence[str]) -> float:
    """Character error rate: character-level edit distance / reference characters, over the words joined by
    single spaces (runs of whitespace and leading / trailing spaces do not count)."""
    def chars(text: str) -> list[str]:
        return list(" ".join(text.split()))

    return _rate(*error_rate([chars(r) for r in ref_texts], [chars(h) for h in hyp_texts]), "characters")


@dataclass(frozen=True)
class LetterVocab:
    """A CTC output vocabulary of letters: ``symbols[0]`` is the blank, ``|`` the word boundary.

    The default is fairseq's LibriSpeech letter dictionary (``|``, A-Z, ``'``; upper case). Targets follow
    fairseq's ``.ltr`` convention (``examples/wav2vec/libri_labels.py``): the letters of each word, ``|`` after
    every word, so ``"hello world"`` -> ``H E L L O | W O R L D |``.
    """

    symbols: tuple[str, ...] = (BLANK, WORD_BOUNDARY, *LETTERS)

    def __post_init__(self) -> None:
        if len(self.symbols) < 3 or self.symbols[0] != BLANK or WORD_BOUNDARY not in self.symbols:
            raise ValueError(f"a letter vocabulary needs the blank {BLANK!r} first and {WORD_BOUNDARY!r}, got "
                             f"{self.symbols}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"a letter vocabulary lists each symbol once, got {self.symbols}")

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    def letters(self, text: str) -> list[str]:
        """Text -> ``.ltr`` tokens: upper-cased words, each followed by ``|``. ValueError on a character that is
        not in the vocabulary (it names the character; normalise the text first)."""
        index = self.index
        out: list[str] = []
        for word in text.upper().split():
            bad = sorted({c for c in word if c not in index or c in (BLANK, WORD_BOUNDARY)})
            if bad:
                raise ValueError(f"characters {bad} of {word!r} are not in the letter vocabulary "
                                 f"({''.join(s for s in self.symbols[1:] if len(s) == 1)})")
            out += [*word, WORD_BOUNDARY]
        return out

    def encode_letters(self, tokens: Sequence[str]) -> list[int]:
        """``.ltr`` tokens (``["H", "I", "|"]``) -> ids; ValueError naming an unknown token or the blank."""
        index = self.index
        bad = sorted({t for t in tokens if t not in index or t == BLANK})
        if bad:
            raise ValueError(f"tokens {bad} are not letters of the vocabulary {list(self.symbols[1:])}")
        return [index[t] for t in tokens]

    def encode(self, text: str) -> list[int]:
        """Text -> target ids (``letters`` then ``encode_letters``)."""
        return self.encode_letters(self.letters(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text: ``|`` becomes a space, blanks are dropped, words joined by single spaces."""
        n = len(self.symbols)
        bad = [i for i in ids if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary of {n} symbols")
        chars = (self.symbols[int(i)] for i in ids if int(i) != 0)
        return " ".join("".join(" " if c == WORD_BOUNDARY else c for c in chars).split())


def letters_to_text(tokens: Sequence[str]) -> str:
    """``.ltr`` tokens -> text (``|`` -> space), words joined by single spaces."""
    return " ".join("".join(" " if t == WORD_BOUNDARY else t for t in tokens).split())
