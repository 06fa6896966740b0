"""The training loop. It does not know which objective, modality or engine it runs.

for each optimizer step:
    for each micro-batch:  loss = engine.model(batch).loss  ->  engine.backward(loss)   (its FLOPs counted)
    engine.step(step)  ->  objective.update_teacher(step + 1)  ->  the logs join the window (on the device)
    every log_every steps and before a checkpoint: read the window (mean over steps and processes), stop on a
        non-finite loss (naming its step)  ->  the run's totals (elapsed_s, flops)  ->  log  ->  checkpoint
    a stop signal (SIGTERM / SIGINT, on any process)  ->  checkpoint  ->  raise TrainingInterrupted
    the wall-clock budget spent (max_seconds, on any process)  ->  log  ->  checkpoint  ->  return

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
from unimim.train.flops import StepFlops
from unimim.train.interrupt import TrainingInterrupted
from unimim.train.metrics import MetricsWriter, NullMetrics
from unimim.train.progress import RunTotals

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

    def read(self, engine: Engine, counts: dict[str, float]) -> tuple[list[float], dict[str, float]]:
        """(per-step losses (steps first .. first + n - 1), {"loss": mean, key: mean or last, count: mean}) as host
        numbers, averaged over the processes; ``counts`` are host numbers of this process (skipped inputs, FLOPs),
        averaged with the rest in the same reduction."""
        tensors = {k: v for k, v in self.values.items() if all(isinstance(x, Tensor) for x in v)}
        device = self.losses[0].device
        packed = [torch.stack(self.losses).float()]  # (n,)
        packed += [torch.stack([x.float().to(device) for x in v]).mean().reshape(1) for v in tensors.values()]
        host = torch.cat(packed).tolist()  # one device -> host copy
        n = len(self.losses)
        out = {f"loss@{i}": host[i] for i in range(n)}
        out.update(zip(tensors, host[n:]))
        out.update({k: float(v[-1]) for k, v in self.values.items() if k not in tensors})
        out.update(counts)
        out = engine.reduce_mean(out)
        step_losses = [out.pop(f"loss@{i}") for i in range(n)]
        return step_losses, {"loss": sum(step_losses) / n, **out}


def train_step(objective: Objective, engine: Engine, batches: Iterator[Batch], step: int, accumulate: int,
               flops: StepFlops) -> tuple[Tensor, dict[str, Any], int]:
    """Optimizer step ``step``: ``accumulate`` micro-batches forward and backward (their FLOPs measured by
    ``flops``), the update, the teacher's. Returns (the step's loss: a 0-d tensor on the device, the logs of the
    engine, the teacher and the last micro-batch's objective, the inputs the data pipeline skipped)."""
    step_loss, logs, skipped = None, {}, 0
    for _ in range(accumulate):
        batch = next(batches)
        skipped += batch.skipped
        batch = batch.to(engine.device)
        with flops.measure(batch):
            with engine.autocast():
                out = engine.model(batch)
            engine.backward(out.loss)
        loss = out.loss.detach() / accumulate  # () on the device: no host synchronisation per micro-batch
        step_loss = loss if step_loss is None else step_loss + loss
        logs = out.logs
    stats = engine.step(step)
    stats.update(objective.update_teacher(step + 1))
    return step_loss, {**stats, **logs}, skipped


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
    totals: RunTotals | None = None,
    max_seconds: float | None = None,
) -> list[float]:
    """Run optimizer steps ``start_step .. total_steps - 1``; return the per-step mean losses.

    ``save(step)`` writes a checkpoint after ``step`` completed updates and returns its path; ``last_checkpoint``
    names the one the run resumed from (for error messages). ``stop_requested()`` returns the number of a signal
    asking to stop, or None; it is polled after every step (and agreed on by all processes), and a request ends
    the run with a checkpoint of that step and :class:`~unimim.train.interrupt.TrainingInterrupted`.

    ``totals`` are the run's totals at ``start_step`` (from its checkpoint); the loop advances them at every read of
    the logs, so that ``save(step)`` stores those of its step, and every metrics line carries ``elapsed_s`` and
    ``flops``. ``max_seconds``: the run ends (with a log line and a checkpoint) after the first step at which its
    elapsed seconds reach it, on any process; fewer losses than steps are returned then.
    """
    objective.train()
    losses: list[float] = []
    last_ckpt = last_checkpoint or "none (no checkpoint written yet)"
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and engine.is_main), dynamic_ncols=True,
               desc=desc)
    totals = totals if totals is not None else RunTotals()
    at_start = RunTotals(**totals.as_dict())  # the totals of the earlier invocations of the run
    flops = StepFlops()  # this process's training FLOPs since start_step
    started = time.perf_counter()  # host time, read without a device synchronisation

    def elapsed() -> float:
        return at_start.elapsed_s + time.perf_counter() - started

    t0, n0 = started, start_step
    skipped = 0  # unreadable inputs passed over by the data pipeline (Batch.skipped)
    window = LogWindow(start_step)  # the steps since the last read of the logs, still on the device
    for step in range(start_step, total_steps):
        step_loss, logs, step_skipped = train_step(objective, engine, batches, step, accumulate, flops)
        skipped += step_skipped
        window.add(step_loss, logs)
        # a stop signal of any process (its number; 0 = none), and a budget spent on any process, reach every
        # process after every step (values agreed on; nothing to agree on in a single process)
        own_stop = stop_requested() if stop_requested is not None else None
        stop_signal = own_stop
        over_budget = max_seconds is not None and elapsed() >= max_seconds
        if engine.world_size > 1:
            agreed = engine.reduce_mean({"stop_signal": own_stop or 0, "over_budget": float(over_budget)})
            stop_signal = own_stop or (signal.SIGTERM if agreed["stop_signal"] > 0 else None)
            over_budget = agreed["over_budget"] > 0

        done = step + 1
        budget_spent = over_budget and done < total_steps  # (on the last step the run just ends)
        log_now = done % log_every == 0 or done == total_steps or budget_spent
        save_now = done % checkpoint_every == 0 or done == total_steps or stop_signal is not None or budget_spent
        if log_now or save_now:  # the logs are read here, and only here: a checkpoint follows finite losses only
            counts = {"skipped_inputs": skipped, "flops": flops.total, "flops_estimated": float(flops.estimated)}
            step_losses, means = window.read(engine, counts)
            bad = next((i for i, v in enumerate(step_losses) if not math.isfinite(v)), None)
            if bad is not None:
                raise NonFiniteLossError(f"non-finite loss ({step_losses[bad]}) at step {window.first + bad}; "
                                         f"last good checkpoint: {last_ckpt}")
            losses.extend(step_losses)
            skipped_all = round(means.pop("skipped_inputs") * engine.world_size)
            newly_estimated = means.pop("flops_estimated") > 0 and not totals.flops_estimated
            # the totals of the run at this step: elapsed read after the window's host copy (on CUDA: after the
            # device finished the steps), FLOPs summed over the processes
            totals.update(RunTotals(elapsed_s=elapsed(), flops=at_start.flops + means.pop("flops") * engine.world_size,
                                    flops_estimated=totals.flops_estimated or newly_estimated))
            window = LogWindow(done)
            if log_now:
                elapsed_here = time.perf_counter() - t0
                throughput = (done - n0) * samples_per_step / max(elapsed_here, 1e-9)
                line = {**means, "samples_per_s": throughput, "skipped_inputs": skipped_all,
                        "elapsed_s": totals.elapsed_s, "flops": totals.flops}
                if newly_estimated:  # once: the first line whose FLOPs hold an estimate
                    line["flops_estimated"] = 1
                metrics.write(done, line)
                bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{logs['lr']:.2e}", sps=f"{throughput:.0f}")
                t0, n0 = time.perf_counter(), done
        if save_now:
            last_ckpt = f"{save(done)} (step {done})"
        bar.update(1)
        if stop_signal is not None and done < total_steps:  # (on the last step the run just ends)
            bar.close()
            raise TrainingInterrupted(stop_signal, done, last_ckpt)
        if budget_spent:
            log.info("wall-clock budget spent: %.1f s >= train.max_seconds=%g after step %d of %d; checkpoint %s",
                     totals.elapsed_s, max_seconds, done, total_steps, last_ckpt)
            break
    bar.close()
    if skipped:
        log.warning("%d unreadable inputs were skipped by this process (see the warnings above)", skipped)
    return losses
