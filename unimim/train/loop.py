"""The training loop. It does not know which objective, modality or engine it runs.

for each optimizer step:
    for each micro-batch:  loss = engine.model(batch).loss  ->  engine.backward(loss)
    engine.step(step)  ->  objective.update_teacher(step + 1)  ->  mean over processes  ->  log  ->  checkpoint
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

from tqdm.auto import tqdm

from unimim.core.batch import Batch
from unimim.objectives.base import Objective
from unimim.train.engine import Engine
from unimim.train.interrupt import TrainingInterrupted
from unimim.train.metrics import MetricsWriter, NullMetrics

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""




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
    for step in range(start_step, total_steps):
        step_loss, logs = 0.0, {}
        for _ in range(accumulate):
            batch = next(batches)
            skipped += batch.skipped
            batch = batch.to(engine.device)
            with engine.autocast():
                out = engine.model(batch)
            loss = float(out.loss.detach())
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss}) at step {step}; last good checkpoint: {last_ckpt}"
                )
            engine.backward(out.loss)
            step_loss += loss / accumulate
            logs = out.logs
        stats = engine.step(step)
        stats.update(objective.update_teacher(step + 1))
        # mean over processes, every step (the returned losses are the global ones); skipped counts are summed;
        # a stop signal of any process (its number; 0 = none) reaches every process here
        own_stop = stop_requested() if stop_requested is not None else None
        logs = engine.reduce_mean({"loss": step_loss, "skipped_inputs": skipped, "stop_signal": own_stop or 0,
                                   **logs})
        step_loss = logs.pop("loss")
        skipped_all = round(logs.pop("skipped_inputs") * engine.world_size)
        stop_signal = own_stop or (signal.SIGTERM if logs.pop("stop_signal") > 0 else None)
        losses.append(step_loss)

        done = step + 1
        if done % log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - t0
            throughput = (done - n0) * samples_per_step / max(elapsed, 1e-9)
            metrics.write(done, {"loss": step_loss, **stats, **logs, "samples_per_s": throughput,
                                 "skipped_inputs": skipped_all})
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{stats['lr']:.2e}", sps=f"{throughput:.0f}")
            t0, n0 = time.perf_counter(), done
        if done % checkpoint_every == 0 or done == total_steps or stop_signal is not None:
            last_ckpt = f"{save(done)} (step {done})"
        bar.update(1)
        if stop_signal is not None and done < total_steps:  # (on the last step the run just ends)
            bar.close()
            raise TrainingInterrupted(stop_signal, done, last_ckpt)
    bar.close()
    if skipped:
        log.warning("%d unreadable inputs were skipped by this process (see the warnings above)", skipped)
    return losses
