"""The training loop. It does not know which objective, modality or engine it runs.

for each optimizer step:
    for each micro-batch:  loss = engine.model(batch).loss  ->  engine.backward(loss)
    engine.step(step)  ->  objective.update_teacher(step + 1)  ->  the logs join the window (on the device)
    every log_every steps and before a checkpoint: read the window (mean over steps and processes), stop on a
        non-finite loss (naming its step)  ->  log  ->  checkpoint
    a stop signal (SIGTERM / SIGINT, on any process)  ->  checkpoint  ->  raise TrainingInterrupted

``engine.model`` is the objective as the engine runs it (itself, or wrapped by DeepSpeed). Every process runs
this loop; only the main one shows progress and writes metrics (``metrics`` is a no-op writer elsewhere).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from unimim.core.batch import Batch
from unimim.objectives.base import Objective
from unimim.train.engine import Engine
from unimim.train.interrupt import TrainingInterrupted
from unimim.train.metrics import MetricsWriter, NullMetrics

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class LogWindow:
    """The logs of the steps since the last read, kept as the objective and the engine return them (0-d device
    tensors stay on the device): reading them is the loop's one host synchronisation, every ``log_every`` steps
    and before every checkpoint, not after every micro-batch.

    ``read`` gives the per-step losses and, for each key, the mean over the window's steps of the tensor values
    (loss, grad_norm, the objective's statistics), or the last step's value of host numbers (lr, ema_decay: values
    of a schedule at the logged step), every value averaged over the processes.
    """

    def __init__(self, first: int) -> None:
        self.first = first  # the optimizer step of the window's first entry
        self.losses: list[Tensor] = []
        self.values: dict[str, list[Any]] = {}

    def add(self, loss: Tensor, values: dict[str, Any]) -> None:
        self.losses.append(loss)
        for k, v in values.items():
            self.values.setdefault(k, []).append(v.detach() if isinstance(v, Tensor) else v)

    def read(self, engine: Engine, skipped: int) -> tuple[list[float], dict[str, float]]:
        """(per-step losses (steps first .. first + n - 1), {"loss": mean, key: mean or last, "skipped_inputs"})
        as host numbers, averaged over the processes."""
        tensors = {k: v for k, v in self.values.items() if all(isinstance(x, Tensor) for x in v)}
        device = self.losses[0].device
        packed = [torch.stack(self.losses).float()]  # (n,)
        packed += [torch.stack([x.float().to(device) for x in v]).mean().reshape(1) for v in tensors.values()]
        host = torch.cat(packed).tolist()  # one device -> host copy
        n = len(self.losses)
        out = {f"loss@{i}": host[i] for i in range(n)}
        out.update(zip(tensors, host[n:]))
        out.update({k: float(v[-1]) for k, v in self.values.items() if k not in tensors})
        out["skipped_inputs"] = skipped
        out = engine.reduce_mean(out)
        step_losses = [out.pop(f"loss@{i}") for i in range(n)]
        return step_losses, {"loss": sum(step_losses) / n, **out}


def train_loop(
    objective: Objective,
    engine: Engine,
    batches: Iterator[Batch],
    *,
    start_step: int,
    total_steps: int,
    accumulate: int,
    samples_per_step: int,
    log_every: int,
    checkpoint_every: int,
    save: Callable[[int], str],
    metrics: MetricsWriter | NullMetrics,
    progress: bool = True,
    last_checkpoint: str | None = None,
    stop_requested: Callable[[], int | None] | None = None,
    desc: str = "pretrain",
) -> list[float]:
    """Run optimizer steps ``start_step .. total_steps - 1``; return the per-step mean losses.

    ``save(step)`` writes a checkpoint after ``step`` completed updates and returns its path; ``last_checkpoint``
    names the one the run resumed from (for error messages). ``stop_requested()`` returns the number of a signal
    asking to stop, or None; it is polled after every step (and agreed on by all processes), and a request ends
    the run with a checkpoint of that step and :class:`~unimim.train.interrupt.TrainingInterrupted`.
    """
    objective.train()
    losses: list[float] = []
    last_ckpt = last_checkpoint or "none (no checkpoint written yet)"
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and engine.is_main), dynamic_ncols=True,
               desc=desc)
    t0, n0 = time.perf_counter(), start_step
    skipped = 0  # unreadable inputs passed over by the data pipeline (Batch.skipped)
    window = LogWindow(start_step)  # the steps since the last read of the logs, still on the device
    for step in range(start_step, total_steps):
        step_loss, logs = None, {}
        for _ in range(accumulate):
            batch = next(batches)
            skipped += batch.skipped
            batch = batch.to(engine.device)
            with engine.autocast():
                out = engine.model(batch)
            engine.backward(out.loss)
            loss = out.loss.detach() / accumulate  # () on the device: no host synchronisation per micro-batch
            step_loss = loss if step_loss is None else step_loss + loss
            logs = out.logs
        stats = engine.step(step)
        stats.update(objective.update_teacher(step + 1))
        window.add(step_loss, {**stats, **logs})
        # a stop signal of any process (its number; 0 = none) reaches every process after every step (one value
        # agreed on; nothing to agree on in a single process)
        own_stop = stop_requested() if stop_requested is not None else None
        stop_signal = own_stop
        if engine.world_size > 1:
            agreed = engine.reduce_mean({"stop_signal": own_stop or 0})["stop_signal"]
            stop_signal = own_stop or (signal.SIGTERM if agreed > 0 else None)

        done = step + 1
        log_now = done % log_every == 0 or done == total_steps
        save_now = done % checkpoint_every == 0 or done == total_steps or stop_signal is not None
        if log_now or save_now:  # the logs are read here, and only here: a checkpoint follows finite losses only
            step_losses, means = window.read(engine, skipped)
            bad = next((i for i, v in enumerate(step_losses) if not math.isfinite(v)), None)
            if bad is not None:
                raise NonFiniteLossError(f"non-finite loss ({step_losses[bad]}) at step {window.first + bad}; "
                                         f"last good checkpoint: {last_ckpt}")
            losses.extend(step_losses)
            skipped_all = round(means.pop("skipped_inputs") * engine.world_size)
            window = LogWindow(done)
            if log_now:
                elapsed = time.perf_counter() - t0
                throughput = (done - n0) * samples_per_step / max(elapsed, 1e-9)
                metrics.write(done, {**means, "samples_per_s": throughput, "skipped_inputs": skipped_all})
                bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{stats['lr']:.2e}", sps=f"{throughput:.0f}")
                t0, n0 = time.perf_counter(), done
        if save_now:
            last_ckpt = f"{save(done)} (step {done})"
        bar.update(1)
        if stop_signal is not None and done < total_steps:  # (on the last step the run just ends)
            bar.close()
            raise TrainingInterrupted(stop_signal, done, last_ckpt)
    bar.close()
    if skipped:
        log.warning("%d unreadable inputs were skipped by this process (see the warnings above)", skipped)
    return losses
