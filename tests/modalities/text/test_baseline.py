"""The text raw-input baseline: TF-IDF of token ids, against scikit-learn's TfidfVectorizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from modalities.text.baseline import TfidfFeatures
from modalities.text.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID
from modalities.text.task import collate_labelled
from unimim.core.batch import Batch

SPECIAL = {BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID}
TRAIN = [[BOS_ID, 7, 7, 9, 12, EOS_ID], [BOS_ID, 9, 12, 12, 30, EOS_ID], [BOS_ID, 7, UNK_ID, 40, EOS_ID],
         [BOS_ID, 30, 9, MASK_ID, 9, 9, 7, EOS_ID], [BOS_ID, 41, EOS_ID], [BOS_ID, 12, 50, 50, 50, EOS_ID]]
TEST = [[BOS_ID, 7, 12, 12, 99, EOS_ID], [BOS_ID, 41, 42, EOS_ID], [BOS_ID, 30, 30, 9, 50, 7, 7, 7, EOS_ID]]


def _batch(docs: list[list[int]]) -> Batch:
    return collate_labelled([{"inputs": torch.tensor(d), "labels": 0} for d in docs])  # padded with <pad>


def _words(docs: list[list[int]]) -> list[list[str]]:
    return [[str(t) for t in d if t not in SPECIAL] for d in docs]


def test_tfidf_equals_scikit_learn():
    extractor = TfidfFeatures(vocab_size=100)
    extractor.fit([_batch(TRAIN[:4]), _batch(TRAIN[4:])])  # fitting sees the split batch by batch
    reference = TfidfVectorizer(analyzer=lambda toks: toks, min_df=2).fit(_words(TRAIN))
    columns = [str(int(c)) for c in extractor.columns]
    assert sorted(columns) == sorted(reference.vocabulary_)  # ids in >= 2 documents: 7, 9, 12, 30
    order = [reference.vocabulary_[c] for c in columns]
    for docs in (TRAIN, TEST):
        batch = _batch(docs)
        assert batch.padding_mask is not None and bool(batch.padding_mask.any())
        ours = extractor.transform(batch).double().numpy()
        theirs = reference.transform(_words(docs)).toarray()[:, order]
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert not extractor.transform(_batch([TRAIN[4]])).any()  # only ids outside the vocabulary: a zero row


def test_padding_is_not_counted_even_when_it_holds_ids():
    extractor = TfidfFeatures(vocab_size=100)
    extractor.fit([_batch(TRAIN)])
    batch = _batch(TEST)
    garbage = batch.inputs.masked_fill(batch.padding_mask, 7)  # padded positions hold a vocabulary id
    same = extractor.transform(Batch(inputs=garbage, padding_mask=batch.padding_mask))
    assert torch.equal(same, extractor.transform(batch))


def test_clear_errors():
    extractor = TfidfFeatures(vocab_size=20)
    with pytest.raises(ValueError, match="fit"):
        extractor.transform(_batch(TRAIN))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        extractor.fit([_batch(TRAIN)])  # id 30 >= 20
    with pytest.raises(ValueError, match="no token id occurs in 2"):
        TfidfFeatures(vocab_size=100).fit([_batch([[BOS_ID, 5, EOS_ID], [BOS_ID, 6, EOS_ID]])])
