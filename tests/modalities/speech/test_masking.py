"""Speech masks against the statistics of data2vec.md §5 and the semantics of fairseq's compute_mask_indices."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.speech.masking import SpeechMaskConfig, SpeechMaskGenerator, block_mask, equalise_counts, span_mask
from unimim.core.masking import draw_masks


def _span_batch(rng, n=500, b=8):
    rows = np.stack([span_mask(n, rng, prob=0.65, length=10, min_masks=1) for _ in range(b)])
    return equalise_counts(rows, rng)


def test_span_masked_fraction_matches_the_reference_statistics():
    # reference (data2vec.md §5): T=500, B=8, p=0.65, L=10, same masks -> 0.4465 +- 0.019 per batch
    rng = np.random.default_rng(0)
    fracs = np.array([_span_batch(rng).mean() for _ in range(400)])
    assert abs(fracs.mean() - 0.4465) < 0.005
    assert 0.012 < fracs.std() < 0.027
    # clearly below the naive coverage 1 - (1 - p/L)^L = 0.489: starts stop at T - L and rows are truncated
    assert fracs.mean() < 0.475


def test_equal_counts_across_the_batch():
    masks = _span_batch(np.random.default_rng(1))
    assert len(set(masks.sum(axis=1).tolist())) == 1


def test_probabilistic_rounding_and_distinct_starts():
    # span length 1: masked count = number of starts exactly (distinct starts never overlap); p*n/L = 6.5
    rng = np.random.default_rng(2)
    counts = np.array([span_mask(10, rng, prob=0.65, length=1).sum() for _ in range(4000)])
    assert set(counts.tolist()) == {6, 7}
    assert abs(counts.mean() - 6.5) < 0.03


def test_spans_are_contiguous_runs_of_the_span_length():
    # sparse masking: separate spans keep their full length 10 (starts < n - L, never clipped)
    rng = np.random.default_rng(3)
    m = span_mask(10_000, rng, prob=0.01, length=10)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]])))
    runs = edges[1::2] - edges[::2]
    assert len(runs) > 5 and np.all(runs >= 10)  # merged overlaps only make runs longer


def test_block_mask_is_exact():
    # data2vec 2.0 audio base: p=0.5, adjust 0.05, length 5, T=499 -> exactly int(499 * 0.5) = 249 masked
    rng = np.random.default_rng(4)
    for _ in range(50):
        assert block_mask(499, rng, prob=0.5, length=5, adjust=0.05).sum() == 249


def test_deterministic_under_a_seed():
    gen = SpeechMaskGenerator(SpeechMaskConfig())
    a = gen(np.random.default_rng(7), 300)
    b = gen(np.random.default_rng(7), 300)
    c = gen(np.random.default_rng(8), 300)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_multi_mask_shape():
    cfg = SpeechMaskConfig(kind="block", prob=0.5, length=5, num_masks=3)
    m = draw_masks(SpeechMaskGenerator(cfg), np.random.default_rng(0), cfg.num_masks, 100)
    assert m.shape == (3, 100) and (m.sum(axis=1) == 50).all() and not np.array_equal(m[0], m[1])


def test_too_short_rows_are_clear_errors():
    errors = 0
    for seed in range(20):  # a 2-frame row: the single span covers it whenever it starts at frame 0
        try:
            assert span_mask(2, np.random.default_rng(seed), prob=0.65, length=10).sum() == 1
        except ValueError as e:
            assert "covered all 2 frames" in str(e)
            errors += 1
    assert 0 < errors < 20
    with pytest.raises(ValueError, match="cannot mask"):
        SpeechMaskGenerator(SpeechMaskConfig())(np.random.default_rng(0), 1)
    with pytest.raises(ValueError, match="masking.kind"):
        SpeechMaskConfig(kind="random")
