"""RoBERTa's single and pair encodings and longest-first truncation, by hand and against transformers'
RobertaTokenizer (built from the same vocabulary and merges: no download)."""

from __future__ import annotations

import json

import pytest

from modalities.text.data.encoding import encode_pair, encode_single, truncate_longest_first
from modalities.text.data.tokenizer import BOS_ID, EOS_ID, TokenizerConfig, train_tokenizer
from tests.conftest import TEXT_FIXTURES

A = 'The "quick" brown fox, said he -- twice.'
B = "It jumped over the lazy dog's back, and then it ran off into the woods"


@pytest.fixture(scope="module")
def tokenizers():
    """Our byte-level BPE trained on the tiny corpus (with merges) and transformers' RobertaTokenizer on the same
    vocabulary and merges."""
    transformers = pytest.importorskip("transformers")
    texts = TEXT_FIXTURES.joinpath("corpus.txt").read_text().split("\n\n")
    ours = train_tokenizer(texts, TokenizerConfig(vocab_size=400, min_frequency=2))
    model = json.loads(ours.tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    assert len(merges) > 50  # real merges, not bytes only: the comparison covers BPE
    return ours, transformers.RobertaTokenizer(vocab=model["vocab"], merges=merges)


def test_single_and_pair_layout_by_hand():
    assert encode_single([7, 8, 9], 10) == [BOS_ID, 7, 8, 9, EOS_ID] == [0, 7, 8, 9, 2]
    assert encode_single([7, 8, 9], 4) == [0, 7, 8, 2]
    assert encode_single([], 2) == [0, 2]
    assert encode_pair([7, 8], [9], 10) == [0, 7, 8, 2, 2, 9, 2]  # <s> A </s> </s> B </s>
    with pytest.raises(ValueError, match=">= 4"):
        encode_pair([7], [8], 3)
    with pytest.raises(ValueError, match=">= 2"):
        encode_single([7], 1)


@pytest.mark.parametrize(("la", "lb", "budget", "expected"), [
    (3, 2, 5, (3, 2)),    # fits: untouched
    (10, 2, 6, (4, 2)),   # the short text fits in half the budget: whole; the long one gets the rest
    (2, 10, 6, (2, 4)),
    (5, 5, 5, (2, 3)),    # a tie: halves, the odd token to the second
    (6, 5, 5, (3, 2)),    # halves, the odd token to the longer
    (4, 5, 5, (2, 3)),
    (4, 4, 0, (0, 0)),
])
def test_longest_first_by_hand(la, lb, budget, expected):
    a, b = list(range(la)), list(range(100, 100 + lb))
    ta, tb = truncate_longest_first(a, b, budget)
    assert (len(ta), len(tb)) == expected
    assert ta == a[: len(ta)] and tb == b[: len(tb)]  # cut from the end


def test_pair_encoding_matches_roberta_tokenizer_token_by_token(tokenizers):
    ours, hf = tokenizers
    a, b = ours.encode(A), ours.encode(B)
    assert hf(A)["input_ids"] == encode_single(a, 512)
    assert hf(A, B)["input_ids"] == encode_pair(a, b, 512) == [0, *a, 2, 2, *b, 2]
    pairs = [(A, B), (B, A), (A, A), ("x y", B), (B, "z"), ("", B)]
    for x, y in pairs:
        ix, iy = ours.encode(x), ours.encode(y)
        for n in (5, 6, 7, 8, 9, 12, 15, 20, 33, len(ix) + len(iy) + 4, 200):
            expected = hf(x, y, truncation="longest_first", max_length=n)["input_ids"]
            assert encode_pair(ix, iy, n) == expected, (x, y, n)
        for n in (3, 5, 16):
            assert encode_single(ix, n) == hf(x, truncation=True, max_length=n)["input_ids"], (x, n)
