"""CTC evaluation: greedy decoding, edit distance, WER / CER against hand-computed cases and torchaudio, and the
letter vocabulary (fairseq's .ltr convention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimim.eval.ctc import (
    BLANK,
    LetterVocab,
    cer,
    edit_distance,
    error_rate,
    greedy_decode,
    letters_to_text,
    wer,
)


def _logits(paths: list[list[int]], vocab: int = 5) -> torch.Tensor:
    """(B, T, V) one-hot-ish logits whose argmax per frame is ``paths[b][t]``."""
    t = max(len(p) for p in paths)
    out = torch.zeros(len(paths), t, vocab)
    for b, p in enumerate(paths):
        for i, s in enumerate(p):
            out[b, i, s] = 3.0
    return out


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    # frames: a a - a b b - - c  -> a a b c   (the blank between two a's keeps both)
    logits = _logits([[1, 1, 0, 1, 2, 2, 0, 0, 3]])
    assert greedy_decode(logits) == [[1, 1, 2, 3]]
    # without the blank the repeat merges: a a a b -> a b
    assert greedy_decode(_logits([[1, 1, 1, 2]])) == [[1, 2]]
    # all blanks -> empty
    assert greedy_decode(_logits([[0, 0, 0]])) == [[]]


def test_greedy_decode_respects_lengths():
    logits = _logits([[1, 2, 3, 4], [2, 2, 0, 0]])
    assert greedy_decode(logits, torch.tensor([2, 4])) == [[1, 2], [2]]
    assert greedy_decode(logits, torch.tensor([0, 1])) == [[], [2]]
    with pytest.raises(ValueError, match="lengths"):
        greedy_decode(logits, torch.tensor([5, 1]))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        greedy_decode(torch.zeros(3, 4))


def test_edit_distance_hand_computed():
    assert edit_distance("kitten", "sitting") == 3  # 2 substitutions + 1 insertion
    assert edit_distance("abc", "abc") == 0
    assert edit_distance("abc", "") == 3  # empty hypothesis: all deletions
    assert edit_distance("", "ab") == 2  # all insertions
    assert edit_distance("abc", "xbc") == 1  # substitution
    assert edit_distance("abc", "abxc") == 1  # insertion
    assert edit_distance("abc", "ac") == 1  # deletion
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance(["the", "cat"], ["cat", "the"]) == 2


def test_error_rate_and_wer_cer_hand_computed():
    assert error_rate([[1, 2, 3], [4]], [[1, 3], [4, 4]]) == (2, 4)
    # WER: ref 'the cat sat' vs hyp 'the bat sat down' -> 1 substitution + 1 insertion over 3 words
    assert wer(["the cat sat"], ["the bat sat down"]) == pytest.approx(2 / 3)
    assert wer(["a b", "c d e"], ["", "c d e"]) == pytest.approx(2 / 5)  # empty hypothesis: 2 deletions
    # CER counts the space: 'ab cd' vs 'abcd' -> 1 deletion over 5 characters
    assert cer(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)
    assert cer(["  ab   cd "], ["ab cd"]) == 0.0  # whitespace runs are one space
    with pytest.raises(ValueError, match="undefined"):
        wer([""], ["x"])
    with pytest.raises(ValueError, match="2 references but 1"):
        error_rate([[1], [2]], [[1]])


def test_edit_distance_matches_torchaudio():
    ta = pytest.importorskip("torchaudio.functional")
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 4, size=int(rng.integers(0, 15))).tolist()
        b = rng.integers(0, 4, size=int(rng.integers(0, 15))).tolist()
        assert edit_distance(a, b) == ta.edit_distance(a, b), (a, b)


def test_letter_vocab_matches_fairseq_ltr_convention():
    vocab = LetterVocab()
    assert vocab.symbols[0] == BLANK and len(vocab) == 29  # blank, '|', 26 letters, apostrophe
    assert vocab.letters("hello  world") == list("HELLO") + ["|"] + list("WORLD") + ["|"]
    ids = vocab.encode("don't stop")
    assert ids[0] != 0 and vocab.decode(ids) == "DON'T STOP"
    # decoding drops blanks, maps '|' to a space, collapses spaces
    i = vocab.index
    assert vocab.decode([0, i["A"], i["|"], 0, i["|"], i["B"], 0]) == "A B"
    assert letters_to_text("H I | T H E R E |".split()) == "HI THERE"
    with pytest.raises(ValueError, match=r"\['1'\]"):
        vocab.letters("route 1")
    with pytest.raises(ValueError, match=r"\['x'\]"):
        vocab.encode_letters(["A", "x"])
    with pytest.raises(ValueError, match="outside"):
        vocab.decode([29])


def test_decode_then_wer_end_to_end():
    vocab = LetterVocab()
    i = vocab.index
    # 'HI |' with a blank between the two frames of I-I (a real repeat would need the blank; here it is one I)
    frames = [i["H"], i["H"], i["I"], 0, i["|"], 0]
    logits = torch.nn.functional.one_hot(torch.tensor([frames]), len(vocab)).float()
    hyp = vocab.decode(greedy_decode(logits)[0])
    assert hyp == "HI"
    assert wer(["HI THERE"], [hyp]) == pytest.approx(0.5)
