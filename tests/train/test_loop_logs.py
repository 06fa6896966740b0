"""The training loop reads its logs every ``log_every`` steps (and before a checkpoint), not after every micro-batch:
the logged values are the per-step values averaged by hand, and a non-finite loss still stops the run, naming its
step, before any checkpoint follows it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from unimim.core.batch import Batch
from unimim.objectives.base import ObjectiveOutput
from unimim.train.engine import SingleProcessEngine
from unimim.train.loop import NonFiniteLossError, train_loop

LOSSES = [4.0, 2.0, 1.0, 7.0, 5.0, 3.0, 6.0]  # per micro-batch, in order
STDS = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]


class Scripted(nn.Module):
    """loss = w * (scripted value): with w = 1 at the forward, the loss and its logs are known in advance."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.losses = losses
        self.calls = 0

    def forward(self, batch: Batch) -> ObjectiveOutput:
        i = self.calls
        self.calls += 1
        loss = self.w * 0 + self.losses[i]  # the value, with a gradient of 0 (w stays 1)
        return ObjectiveOutput(loss=loss, logs={"target_std": torch.tensor(STDS[i]), "tau": 0.9 + i})

    def update_teacher(self, step: int) -> dict[str, float]:
        return {"ema_decay": 1.0 - 1.0 / (step + 1)}


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def write(self, step: int, values: dict) -> None:
        self.rows.append((step, values))

    def close(self) -> None:
        pass


def _run(losses, *, steps, accumulate=1, log_every=1, checkpoint_every=100, saved=None):
    model = Scripted(losses)
    engine = SingleProcessEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), np.arange(1.0, 11.0),
                                 device=torch.device("cpu"), precision="fp32", accumulate=accumulate)
    batches = iter(lambda: Batch(inputs=torch.zeros(1, 1)), None)
    metrics = Rows()
    saved = [] if saved is None else saved
    out = train_loop(model, engine, batches, start_step=0, total_steps=steps, accumulate=accumulate,
                     samples_per_step=1, log_every=log_every, checkpoint_every=checkpoint_every,
                     save=lambda s: saved.append(s) or f"ckpt{s}", metrics=metrics, progress=False)
    return out, metrics.rows


def test_logged_values_are_the_window_means_by_hand():
    losses, rows = _run(LOSSES[:6], steps=3, accumulate=2, log_every=2)
    # per step: the mean of its two micro-batches
    assert losses == pytest.approx([3.0, 4.0, 4.0])
    assert [s for s, _ in rows] == [2, 3]  # every 2 steps, and the last one
    first, last = rows[0][1], rows[1][1]
    assert first["loss"] == pytest.approx((3.0 + 4.0) / 2)
    # tensor logs: the mean over the window's steps of each step's last micro-batch (steps 0, 1: entries 1, 3)
    assert first["target_std"] == pytest.approx((STDS[1] + STDS[3]) / 2)
    # host numbers (schedules): the logged step's value
    assert first["tau"] == pytest.approx(0.9 + 3) and first["lr"] == pytest.approx(2.0)
    assert first["ema_decay"] == pytest.approx(1.0 - 1.0 / 3)
    assert first["grad_norm"] == pytest.approx(0.0) and isinstance(first["grad_norm"], float)
    assert last["loss"] == pytest.approx(4.0) and last["target_std"] == pytest.approx(STDS[5])
    assert all(isinstance(v, (int, float)) for _, r in rows for v in r.values())


def test_non_finite_loss_stops_at_the_log_step_naming_its_step():
    saved: list[int] = []
    bad = [1.0, 2.0, 3.0, math.nan, 5.0, 6.0, 7.0]
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3; last good checkpoint: ckpt2"):
        _run(bad, steps=7, log_every=5, checkpoint_every=2, saved=saved)
    assert saved == [2]  # the checkpoint of step 4 would follow the NaN: it is not written


def test_inf_is_caught_at_the_last_step():
    with pytest.raises(NonFiniteLossError, match=r"at step 2; last good checkpoint: none"):
        _run([1.0, 2.0, math.inf], steps=3, log_every=10)
