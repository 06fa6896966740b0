"""Wall-clock and FLOPs totals across resumes, the wall-clock budget (``train.max_seconds``), ``run_progress`` and
``measure_step_cost``."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_overrides
from unimim.app.cost import measure_step_cost
from unimim.app.experiment import TrainConfig, load_recipe
from unimim.app.pretrain import pretrain
from unimim.config import ConfigError
from unimim.core.batch import Batch
from unimim.objectives.base import ObjectiveOutput
from unimim.train.checkpoint import load_checkpoint
from unimim.train.engine import SingleProcessEngine
from unimim.train.loop import train_loop
from unimim.train.metrics import read_metrics
from unimim.train.progress import RunTotals, run_progress

RECIPE = Path(__file__).resolve().parents[2] / "recipes/image/data2vec_fmnist_cpu.yaml"


def tiny(tmp_path: Path, *extra: str):
    cfg = load_recipe(RECIPE)
    return load_recipe(RECIPE, tiny_overrides(cfg.modality, cfg.objective, tmp_path)
                       + [f"train.out_dir={tmp_path}", "train.precision=fp32", *extra])


def test_elapsed_and_flops_continue_across_a_resume(tmp_path):
    first = pretrain(tiny(tmp_path, "train.steps=4", "train.stop_after=2"), progress=False)
    assert first.stopped_by == "stop_after" and len(first.losses) == 2
    saved = run_progress(first.run_dir)
    assert saved["step"] == 2 and saved["elapsed_s"] == first.elapsed_s > 0 and saved["flops"] == first.flops > 0
    assert load_checkpoint(first.run_dir)["totals"]["flops"] == first.flops

    second = pretrain(tiny(tmp_path, "train.steps=4"), progress=False)
    assert second.start_step == 2 and second.stopped_by == "steps"
    rows = read_metrics(second.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["elapsed_s"] > rows[1]["elapsed_s"] == saved["elapsed_s"]
    per_step = rows[0]["flops"]
    assert [r["flops"] for r in rows] == [per_step * n for n in (1, 2, 3, 4)]  # continued from the checkpoint
    assert second.flops == rows[-1]["flops"] and run_progress(second.run_dir)["step"] == 4

    again = pretrain(tiny(tmp_path, "train.steps=4"), progress=False)
    assert again.stopped_by == "complete" and again.losses == [] and again.flops == second.flops


def test_a_tiny_wall_clock_budget_stops_after_one_step_with_a_checkpoint(tmp_path):
    result = pretrain(tiny(tmp_path, "train.steps=5", "train.max_seconds=1e-6", "train.checkpoint_every=100"),
                      progress=False)
    assert result.stopped_by == "max_seconds" and len(result.losses) == 1
    assert load_checkpoint(result.run_dir)["step"] == 1
    assert [r["step"] for r in read_metrics(result.run_dir)] == [1]  # the step's line is written
    assert run_progress(result.run_dir)["elapsed_s"] == result.elapsed_s >= 1e-6

    again = pretrain(tiny(tmp_path, "train.steps=5", "train.max_seconds=1e-6"), progress=False)
    assert again.stopped_by == "max_seconds" and again.losses == [] and again.start_step == 1
    # a budget may be raised on resume: the run continues to train.steps
    more = pretrain(tiny(tmp_path, "train.steps=5", "train.max_seconds=1e6"), progress=False)
    assert more.stopped_by == "steps" and more.start_step == 1 and len(more.losses) == 4


def test_max_seconds_must_be_positive():
    with pytest.raises(ValueError, match="train.max_seconds must be > 0 or null, got 0"):
        TrainConfig(max_seconds=0)
    with pytest.raises(ConfigError, match="train.max_seconds must be > 0"):
        load_recipe(RECIPE, ["train.max_seconds=-1"])
    assert TrainConfig(max_seconds=None).max_seconds is None


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return ObjectiveOutput(loss=self.lin(batch.inputs).pow(2).mean(), logs={})

    def update_teacher(self, step: int) -> dict[str, float]:
        return {}


class _TwoProcesses(SingleProcessEngine):
    """A process whose (simulated) peer spent its budget and counted as many FLOPs: the means of two processes."""

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        peer = {**values, **({"over_budget": 1.0} if "over_budget" in values else {})}
        return {k: (float(values[k]) + float(peer[k])) / 2 for k in values}


def test_every_process_stops_when_one_spent_its_budget_and_flops_are_summed():
    model = _Plain()
    engine = _TwoProcesses(model, torch.optim.SGD(model.parameters(), lr=0.1), np.full(10, 0.1),
                           device=torch.device("cpu"), precision="fp32")
    engine.world_size = 2
    saved: list[int] = []
    rows: list[dict] = []

    class Rows:
        def write(self, step: int, values: dict) -> None:
            rows.append(values)

    totals = RunTotals(elapsed_s=10.0, flops=100.0)
    losses = train_loop(model, engine, iter(lambda: Batch(inputs=torch.randn(4, 3)), None), start_step=0,
                        total_steps=5, accumulate=1, samples_per_step=8, log_every=10, checkpoint_every=10,
                        save=lambda s: saved.append(s) or f"ckpt{s}", metrics=Rows(), progress=False,
                        totals=totals, max_seconds=1e9)  # this process is far from its budget
    assert len(losses) == 1 and saved == [1] and len(rows) == 1
    own = 2 * 4 * 3 * 2 * 2  # forward + the weight gradient of a 3 -> 2 linear layer on 4 rows
    assert totals.flops == rows[0]["flops"] == 100.0 + 2 * own  # both processes' FLOPs, after the earlier 100
    assert totals.elapsed_s > 10.0


def test_run_progress_of_a_directory_without_a_checkpoint(tmp_path):
    assert run_progress(tmp_path) == {"step": 0, "elapsed_s": 0.0, "flops": 0.0, "flops_estimated": False}
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        run_progress(tmp_path / "missing")


def test_measure_step_cost_leaves_a_following_pretrain_unchanged(tmp_path):
    plain = pretrain(tiny(tmp_path / "a", "train.steps=2"), progress=False)
    cfg = tiny(tmp_path / "b", "train.steps=2")
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    cost = measure_step_cost(cfg, steps=2, warmup=1)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert cost.seconds_per_step > 0 and cost.flops_per_step > 0 and cost.steps_timed == 2
    assert cost.examples_per_step == cfg.train.batch_size * cfg.train.accumulate
    assert not cfg.run_dir.exists()  # no run directory, checkpoint or metrics
    after = pretrain(cfg, progress=False)
    assert after.losses == plain.losses
    assert cost.flops_per_step == pytest.approx(read_metrics(after.run_dir)[0]["flops"])


def test_measure_step_cost_times_no_step_under_the_flop_counter(tmp_path, monkeypatch):
    # every batch a new shape signature (as speech crops are): only the warm-up step may be counted, since the
    # counter slows the step it watches; the timed steps' FLOPs are scaled from it (same input size here: equal)
    import unimim.train.flops as flops_mod

    counted = []
    real_counter = flops_mod.counter
    monkeypatch.setattr(flops_mod, "batch_signature", lambda batch: object())
    monkeypatch.setattr(flops_mod, "counter", lambda: counted.append(1) or real_counter())
    cost = measure_step_cost(tiny(tmp_path, "train.steps=4"), steps=3, warmup=1)
    assert len(counted) == 1
    assert cost.flops_per_step > 0 and cost.steps_timed == 3
