"""The cost of one optimizer step of an experiment, measured before a run: wall-clock seconds and training FLOPs.

A wall-clock or FLOPs budget becomes ``train.steps`` through it (a cross-modal comparison under one budget). The
objective and the example source are built as :func:`unimim.app.pretrain.pretrain` builds them (same seeds, same
modality calls), trained by a :class:`~unimim.train.engine.SingleProcessEngine` with the recipe's optimizer,
precision and device on the real loader, without a run directory, checkpoint or metrics. The global RNG states
are restored afterwards, so a later ``pretrain(cfg)`` in the same process runs as it would have without it.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unimim.app.registry import MODALITIES, build_objective
from unimim.train.checkpoint import rng_state, set_rng_state
from unimim.train.compile import compile_blocks
from unimim.train.data import make_loader
from unimim.train.engine import SingleProcessEngine, resolve_device
from unimim.train.flops import StepFlops
from unimim.train.loop import train_step
from unimim.train.optim import build_optimizer, peak_lr, weight_decay_schedule
from unimim.train.run import apply_host_settings, seed_everything
from unimim.train.schedules import cosine_with_warmup

log = logging.getLogger(__name__)


@dataclass
class StepCost:
    seconds_per_step: float  # median over the timed steps (one process)
    flops_per_step: float    # training FLOPs of one process's step, mean over the timed steps
    examples_per_step: int   # examples of one process's step (train.batch_size x train.accumulate)
    steps_timed: int


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step_cost(cfg: Any, *, steps: int = 5, warmup: int = 2) -> StepCost:
    """Run ``warmup + steps`` optimizer steps of ``cfg`` (an experiment config, not modified) and return their cost
    (the timed ones: the last ``steps``). One process: under ``deepspeed.enabled`` this is one rank's step without
    DeepSpeed's communication. The lr follows the recipe's schedule from step 0. FLOPs are counted on the warm-up
    steps' batch shapes; a timed step of a shape not seen in the warm-up (speech crops vary) is estimated from the
    closest counted one, scaled by input size, so that the counter's overhead is never timed."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"measure_step_cost needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    rng, threads = rng_state(), torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="unimim_cost_") as tmp:
            return _measure(copy.deepcopy(cfg), Path(tmp), steps, warmup)
    finally:
        set_rng_state(rng)
        torch.set_num_threads(threads)


def _measure(cfg: Any, tmp: Path, steps: int, warmup: int) -> StepCost:
    apply_host_settings(cfg.train)  # as pretrain does (the threads are restored after; the allocator's are not)
    seed_everything(cfg.train.seed)  # as pretrain does: the objective's initial weights depend on it
    spec = MODALITIES[cfg.modality]
    if spec.bind_run_dir is not None:  # inputs kept with a run (the text tokenizer): a temporary copy here
        spec.bind_run_dir(cfg.data, tmp)
    source = spec.build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
    objective = build_objective(cfg)
    total = warmup + steps
    lr = peak_lr(cfg.optim, cfg.effective_batch)
    engine = SingleProcessEngine(
        objective, build_optimizer(objective, cfg.optim),
        cosine_with_warmup(lr, cfg.optim.min_lr, max(cfg.train.steps, total), cfg.optim.warmup_steps),
        device=resolve_device(cfg.train.device), accumulate=cfg.train.accumulate, clip_grad=cfg.optim.clip_grad,
        clip_mode=cfg.optim.clip_mode, wd_schedule=weight_decay_schedule(cfg.optim, max(cfg.train.steps, total)),
        precision=cfg.train.precision,
    )
    if cfg.train.compile:  # as the run will be (the warm-up steps take the compilation)
        compile_blocks(objective, engine.device)
    loader = make_loader(source, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                         num_workers=cfg.train.num_workers, collate_fn=source.collate)
    batches = iter(loader)
    flops = StepFlops()
    seconds, step_flops = [], []
    objective.train()
    try:
        for step in range(total):
            if step == warmup:  # no timed step runs under the FLOP counter (it slows a step by a third or more):
                flops.max_signatures = max(len(flops.costs), 1)  # a new shape's FLOPs are scaled from a counted one
            before = flops.total
            _synchronize(engine.device)
            t = time.perf_counter()
            loss, _, _ = train_step(objective, engine, batches, step, cfg.train.accumulate, flops)
            loss.item()  # the step finished on the device
            if step >= warmup:
                seconds.append(time.perf_counter() - t)
                step_flops.append(flops.total - before)
    finally:
        del batches, loader  # the DataLoader's workers end with their iterator
    cost = StepCost(seconds_per_step=statistics.median(seconds), flops_per_step=sum(step_flops) / len(step_flops),
                    examples_per_step=cfg.effective_batch, steps_timed=steps)
    log.info("%s/%s step cost: %.3g s, %.3g FLOPs, %d examples (median / mean of %d steps after %d warm-up)",
             cfg.modality, cfg.objective, cost.seconds_per_step, cost.flops_per_step, cost.examples_per_step,
             steps, warmup)
    return cost
