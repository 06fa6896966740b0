"""Text masks: BERT 80/10/10 statistics, spans, exact-count random masks, specials never masked, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from modalities.text.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID
from modalities.text.masking import TextMaskConfig, TextMasker

V = 1000


def _sequence(rng, n=200):
    ids = rng.integers(NUM_SPECIAL, V, n)
    ids[0], ids[-1], ids[n // 2] = BOS_ID, EOS_ID, EOS_ID  # specials inside as well (documents spanning blocks)
    ids[n // 3] = PAD_ID
    return ids


def test_bert_80_10_10():
    masker = TextMasker(TextMaskConfig(), V)
    rng = np.random.default_rng(0)
    selected = masked = unchanged = randomised = maskable = 0
    for _ in range(400):
        ids = _sequence(rng)
        mask, student = masker(ids, rng)
        special = ids < NUM_SPECIAL
        assert not (mask & special).any() and (student[special] == ids[special]).all()
        assert (student[~mask] == ids[~mask]).all()  # only selected tokens change
        maskable += int((~special).sum())
        selected += int(mask.sum())
        masked += int((student[mask] == MASK_ID).sum())
        unchanged += int((student[mask] == ids[mask]).sum())
        changed = mask & (student != ids) & (student != MASK_ID)
        randomised += int(changed.sum())
        assert (student[changed] >= NUM_SPECIAL).all() and (student[changed] < V).all()
    assert abs(selected / maskable - 0.15) < 0.005
    assert abs(masked / selected - 0.8) < 0.02
    # a random draw equals the original token with probability 1/(V-5): counted as unchanged
    assert abs(unchanged / selected - 0.1) < 0.015 and abs(randomised / selected - 0.1) < 0.015


def test_span_masking_shipped_config():
    cfg = TextMaskConfig(prob=0.35, span_length=4, random_token_prob=0.0, leave_unmasked_prob=0.0)
    masker = TextMasker(cfg, V)
    rng = np.random.default_rng(1)
    ids = rng.integers(NUM_SPECIAL, V, 512)
    fracs, runs = [], []
    for _ in range(200):
        mask, student = masker(ids, rng)
        assert (student[mask] == MASK_ID).all()
        fracs.append(mask.mean())
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        runs += list(edges[1::2] - edges[::2])
    # overlapping spans merge: coverage below 0.35, runs of at least 4 except where clipped at the end
    assert 0.27 < np.mean(fracs) < 0.35
    assert np.mean(np.array(runs) >= 4) > 0.95


def test_random_exact_count_and_determinism():
    cfg = TextMaskConfig(kind="random", prob=0.48, random_token_prob=0.0, leave_unmasked_prob=0.0)
    masker = TextMasker(cfg, V)
    ids = _sequence(np.random.default_rng(2), 100)
    a = masker(ids, np.random.default_rng(7))
    b = masker(ids, np.random.default_rng(7))
    assert a[0].sum() == int(0.48 * len(ids)) and (a[1] == ids).all()  # of all positions: equal-length rows agree
    assert not a[0][ids < NUM_SPECIAL].any()
    assert (a[0] == b[0]).all()
    assert not (a[0] == masker(ids, np.random.default_rng(8))[0]).all()


def test_only_specials_and_bad_config():
    masker = TextMasker(TextMaskConfig(), V)
    mask, student = masker(np.array([BOS_ID, EOS_ID]), np.random.default_rng(0))
    assert not mask.any()
    with pytest.raises(ValueError, match="random_token_prob"):
        TextMaskConfig(kind="random", prob=0.5)
    with pytest.raises(ValueError, match="<= 1"):
        TextMaskConfig(random_token_prob=0.6, leave_unmasked_prob=0.6)
