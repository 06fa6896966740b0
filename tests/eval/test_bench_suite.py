"""The suite file (strict, checked before anything runs) and the budget arithmetic (hand-computed)."""

from __future__ import annotations

import pytest

from unimim.config import ConfigError, from_dict
from unimim.eval.bench.budget import steps_for_budget, stretch_schedule
from unimim.eval.bench.suite import Suite


def _suite(**kw):
    raw = {"name": "s", "entries": [{"name": "a", "recipe": "image/mae_fmnist_cpu"}], **kw}
    return from_dict(Suite, raw)


def test_steps_for_each_budget_kind():
    assert steps_for_budget("steps", 40, examples_per_step=128) == 40
    assert steps_for_budget("samples", 1000, examples_per_step=128) == 7          # 1000 // 128
    assert steps_for_budget("samples", 1024, examples_per_step=128) == 8          # exact: no float shortfall
    assert steps_for_budget("seconds", 60, examples_per_step=1, seconds_per_step=0.7) == 85  # 85.7
    assert steps_for_budget("flops", 1e15, examples_per_step=1, flops_per_step=3e12) == 333
    assert steps_for_budget("seconds", 0.1, examples_per_step=1, seconds_per_step=5.0) == 1  # at least one step
    with pytest.raises(ValueError, match="positive cost"):
        steps_for_budget("seconds", 60, examples_per_step=1)
    with pytest.raises(ValueError, match="unknown budget"):
        steps_for_budget("epochs", 1, examples_per_step=1)


def test_stretch_schedule_scales_every_schedule_length():
    raw = {"train": {"steps": 500}, "optim": {"warmup_steps": 50},
           "method": {"ema": {"anneal_steps": 500, "decay": 0.998}, "freeze_steps": 0, "kl_warmup_steps": 3,
                      "flag_steps": True}}
    assert stretch_schedule(raw, 250) == ["train.steps=250", "optim.warmup_steps=25", "method.ema.anneal_steps=250",
                                          "method.freeze_steps=0", "method.kl_warmup_steps=2"]
    # a positive length never rounds to 0
    assert "method.kl_warmup_steps=1" in stretch_schedule(raw, 10)


def test_entry_forms_and_stage_shares():
    s = _suite(entries=[
        {"name": "one", "recipe": "image/mae_fmnist_cpu", "overrides": ["train.seed=1"]},
        {"name": "two", "stages": [{"name": "dvae", "recipe": "image/dvae_fmnist_cpu", "share": 0.25},
                                   {"name": "beit", "recipe": "image/beit_fmnist_cpu",
                                    "overrides": ["method.tokenizer={dvae}"]}], "overrides": ["train.seed=2"]}])
    one, two = s.entries
    assert [st.name for st in one.stages] == ["pretrain"] and one.stages[0].overrides == ["train.seed=1"]
    assert two.shares() == [0.25, 0.75]
    assert two.stages[-1].overrides == ["method.tokenizer={dvae}", "train.seed=2"]  # entry overrides: last stage


@pytest.mark.parametrize("entries, message", [
    ([{"name": "a"}], "either recipe"),
    ([{"name": "a", "recipe": "x", "stages": [{"recipe": "y"}]}], "either recipe"),
    ([{"name": "a", "recipe": "x"}, {"name": "a", "recipe": "y"}], "must differ"),
    ([{"name": "a b", "recipe": "x"}], "names a directory"),
    ([{"name": "a", "stages": [{"name": "s1", "recipe": "x", "overrides": ["method.tokenizer={s2}"]},
                               {"name": "s2", "recipe": "y"}]}], "names no earlier stage"),
    ([{"name": "a", "stages": [{"name": "s1", "recipe": "x", "share": 0.6},
                               {"name": "s2", "recipe": "y", "share": 0.6}]}], "shares sum"),
    ([], "at least one entry"),
])
def test_bad_suites_are_one_line_errors(entries, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Suite, {"name": "s", "entries": entries})


def test_budget_and_unknown_keys():
    with pytest.raises(ConfigError, match="budget.kind"):
        _suite(budget={"kind": "epochs", "value": 1})
    with pytest.raises(ConfigError, match="must be > 0"):
        _suite(budget={"kind": "steps", "value": 0})
    with pytest.raises(ConfigError, match="unknown config key 'evaluate.probes'"):
        _suite(evaluate={"probes": True})
    assert _suite(budget={"kind": "seconds", "value": 240}).budget.describe() == \
        "240 s of training wall-clock per entry"
