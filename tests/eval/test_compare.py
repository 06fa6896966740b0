"""Paired bootstrap of an accuracy difference: hand-computed cases and the normal approximation it should match."""

from __future__ import annotations

import math

import pytest
import torch

from unimim.eval.compare import paired_bootstrap


def test_identical_outcomes_give_a_zero_width_interval_at_the_difference():
    a = torch.tensor([True, True, False, True])
    out = paired_bootstrap(a, a.clone(), samples=200)
    assert out == {"diff": 0.0, "low": 0.0, "high": 0.0, "level": 0.95, "num_examples": 4.0}
    # A right everywhere, B wrong everywhere: every resample differs by exactly 1
    out = paired_bootstrap(torch.ones(10, dtype=torch.bool), torch.zeros(10, dtype=torch.bool), samples=200)
    assert (out["diff"], out["low"], out["high"]) == (1.0, 1.0, 1.0)


def test_interval_matches_the_normal_approximation_of_the_paired_difference():
    # M = 5000 examples, A right on 48 %, B on 44 %, correlated (shared easy examples): the bootstrap interval
    # should be diff +- 1.96 * sd(d) / sqrt(M), the textbook paired standard error, within a few percent.
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5000, generator=g)
    a = u < 0.48
    b = (u < 0.40) | ((u > 0.6) & (torch.rand(5000, generator=g) < 0.1))
    d = a.double() - b.double()
    se = d.std().item() / math.sqrt(5000)
    out = paired_bootstrap(a, b, samples=4000, seed=1)
    assert out["diff"] == pytest.approx(d.mean().item())
    assert out["low"] < out["diff"] < out["high"]
    assert (out["high"] - out["low"]) / 2 == pytest.approx(1.96 * se, rel=0.08)
    assert (out["high"] + out["low"]) / 2 == pytest.approx(out["diff"], abs=0.2 * se)
    # the unpaired interval would be wider: pairing is what makes a small gain on shared examples measurable
    unpaired_se = math.sqrt(a.double().var().item() / 5000 + b.double().var().item() / 5000)
    assert se < unpaired_se
    assert paired_bootstrap(a, b, samples=4000, seed=1) == out  # deterministic


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no test examples"):
        paired_bootstrap(torch.ones(0, dtype=torch.bool), torch.ones(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool), level=1.0)
