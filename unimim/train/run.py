"""The pretraining run of already-built parts: an objective and its example source -> engine, loader, the loop,
checkpoints and resume. The composition root (:mod:`unimim.app.pretrain`) builds the parts from a config."""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from unimim.config import ConfigError, to_dict
from unimim.core.batch import Batch
from unimim.train import distributed as dist_utils
from unimim.train.checkpoint import (
    CHECKPOINT_NAME,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from unimim.train.compile import compile_blocks
from unimim.train.data import ExampleSource, make_loader
from unimim.train.ds_checkpoint import DeepSpeedCheckpoints
from unimim.train.engine import SingleProcessEngine, resolve_device
from unimim.train.host_memory import retain_freed_memory
from unimim.train.interrupt import stop_on_signals
from unimim.train.loop import train_loop
from unimim.train.metrics import MetricsWriter, NullMetrics, check_loggers
from unimim.train.optim import build_optimizer, peak_lr, weight_decay_schedule
from unimim.train.progress import RunTotals
from unimim.train.run_dir import OutputError, describe_os_error, locked, make_run_dir, remove_partial_files, set_aside
from unimim.train.schedules import cosine_with_warmup

log = logging.getLogger(__name__)

# keys that may differ between a run and its resumption without changing the trajectory. Not train.steps: the lr
# schedule spans it, so a new length would jump the lr (end a job slice early with train.stop_after instead; a
# wall-clock budget, train.max_seconds, may be extended on resume).
# Not part of a run's identity either: train.out_dir (a moved or copied run directory resumes).
RUNTIME_CHANGES = ("train.out_dir", "train.log_every", "train.checkpoint_every", "train.num_workers",
                   "train.resume", "train.threads", "train.device", "train.stop_after", "train.max_seconds",
                   "train.loggers", "train.wandb_project", "train.compile", "train.retain_freed_memory")
# evaluation settings (probes, fine-tuning and its labelled task) never block resuming pretraining
RESUMABLE_CHANGES = (*RUNTIME_CHANGES, "deepspeed.timeout_s", "probe.", "task.", "finetune.")


@dataclass
class PretrainResult:
    run_dir: Path
    losses: list[float]   # per optimizer step run in this call
    start_step: int       # 0, or the step resumed from
    stopped_by: str = "steps"  # steps (train.steps reached) | stop_after | max_seconds | complete (nothing to run)
    elapsed_s: float = 0.0     # the run's training wall-clock seconds since step 0, at the end of this call
    flops: float = 0.0         # the run's training FLOPs since step 0 (all processes), at the end of this call


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resumable(saved: dict[str, Any], current: dict[str, Any],
                    allowed: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """A :class:`ConfigError` naming the keys (outside the ``allowed`` prefixes) in which ``current`` differs."""
    a, b = _flatten(saved), _flatten(current)
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(allowed)]
    if diffs:
        detail = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs[:8])
        hint = (" The lr schedule spans train.steps: keep it, and end a job early with train.stop_after=N."
                if "train.steps" in diffs else "")
        raise ConfigError(
            f"cannot resume: the config differs from the checkpoint's ({detail}).{hint} "
            "Use another name=..., or train.resume=false to start over in the same directory."
        )


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {describe_os_error(e)}") from None


def write_config(cfg: Any, run_dir: Path) -> None:
    _write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _check_accelerator(cfg: Any) -> None:
    """Refuse a device or precision that DeepSpeed's accelerator does not offer, before anything starts."""
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()  # DeepSpeed's accelerator: cuda, or cpu with DS_ACCELERATOR=cpu
    if cfg.train.device not in ("auto", accel.device_name()):
        raise ConfigError(f"train.device={cfg.train.device!r} but DeepSpeed's accelerator is {accel.device_name()!r} "
                          "(each process takes the device of its LOCAL_RANK): use train.device=auto, or set "
                          "DS_ACCELERATOR")
    supported = {"fp32": True, "bf16": accel.is_bf16_supported(), "fp16": accel.is_fp16_supported()}
    if not supported[cfg.train.precision]:
        raise ValueError(f"{cfg.train.precision} training is not supported by DeepSpeed's {accel.device_name()} "
                         "accelerator; use precision: bf16" + (" or fp32" if cfg.train.precision == "bf16" else ""))


def _build_deepspeed(cfg: Any, objective: torch.nn.Module, schedule: np.ndarray,
                     wd_schedule: np.ndarray | None = None) -> Any:
    """Join the process group, then wrap ``objective`` in a DeepSpeed engine (its config saved in the run dir)."""
    from unimim.train.ds_engine import DS_CONFIG_NAME, DeepSpeedEngine, build_ds_config

    _check_accelerator(cfg)
    dist_utils.init_distributed(cfg.deepspeed.timeout_s)
    ds_config = build_ds_config(cfg, dist_utils.world_size())
    if dist_utils.rank() == 0:
        _write_text(cfg.run_dir / DS_CONFIG_NAME, json.dumps(ds_config, indent=2) + "\n")
    return DeepSpeedEngine(objective, build_optimizer(objective, cfg.optim), schedule, ds_config=ds_config,
                           precision=cfg.train.precision, wd_schedule=wd_schedule)


def _beating(batches: Iterator[Batch], beat: Callable[[], None]) -> Iterator[Batch]:
    for batch in batches:
        beat()
        yield batch


def _beating_save(save: Callable[[int], str], beat: Callable[[], None]) -> Callable[[int], str]:
    def beating(step: int) -> str:
        beat()
        path = save(step)
        beat()
        return path

    return beating


@contextlib.contextmanager
def run_context(cfg: Any) -> Iterator[None]:
    """The process group and the run directory of one pretraining run, around building and training.

    With ``deepspeed.enabled`` the process joins the group first (without a launcher: a world of one whose
    rendezvous variables are gone from ``os.environ`` afterwards). The run directory is locked for the run (a second
    run in it fails at once, :mod:`unimim.train.run_dir`); ``train.resume=false`` sets an earlier run's files aside
    in it and starts over."""
    with contextlib.ExitStack() as stack:
        if cfg.deepspeed.enabled:
            stack.enter_context(dist_utils.launch_env())
            _check_accelerator(cfg)
            dist_utils.init_distributed(cfg.deepspeed.timeout_s)
        if dist_utils.rank() == 0:  # one process owns the directory; the others wait until it is ready
            make_run_dir(cfg.run_dir, cfg.train.out_dir)
            stack.enter_context(locked(cfg.run_dir))
            if not cfg.train.resume:
                set_aside(cfg.run_dir)
            remove_partial_files(cfg.run_dir)
        dist_utils.barrier()
        yield


def apply_host_settings(train: Any) -> None:
    """The process settings of a run's ``train`` config (pretraining, fine-tuning, step-cost measurement): torch's
    intra-op threads and the allocator's thresholds (:func:`retain_freed_memory`)."""
    if train.threads:
        torch.set_num_threads(train.threads)
    retain_freed_memory(train.retain_freed_memory)


def prepare_process(cfg: Any) -> None:
    """Per-process set-up before anything is built: log level by rank, :func:`apply_host_settings`, the seeds (the
    objective's initial weights are drawn after this). Inside :func:`run_context`."""
    if cfg.deepspeed.enabled and dist_utils.rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs; the others report warnings and errors only
    apply_host_settings(cfg.train)
    seed_everything(cfg.train.seed)


def run_pretraining(cfg: Any, objective: torch.nn.Module, source: ExampleSource, *, progress: bool = True,
                    optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
                    resumable: tuple[str, ...] = RESUMABLE_CHANGES, desc: str = "pretrain") -> PretrainResult:
    """Train ``objective`` on ``source`` (its ``collate`` makes the batches) as ``cfg`` (an experiment config) says,
    in ``cfg.run_dir``; resume from its checkpoint when asked. Call it inside :func:`run_context`, and
    :func:`prepare_process` before building the parts.

    Any trainable module runs here (fine-tuning does): ``objective(batch) -> output with .loss`` and
    ``update_teacher(step) -> dict``; ``cfg`` needs ``run_dir``, ``train``, ``optim``, ``deepspeed``, ``modality``,
    ``objective`` and ``effective_batch``. ``optimizer(module)`` replaces :func:`build_optimizer` (e.g. layer-wise
    lr decay groups; single process only), ``resumable`` names the config keys that may change on resuming, and
    ``desc`` labels the progress bar.

    With ``deepspeed.enabled`` every process of the job runs this (started by a launcher, recipes/launch/); each
    trains on its shard of every global batch of ``train.batch_size x train.accumulate x processes`` examples.
    SIGTERM / SIGINT stop the run after the current step with a checkpoint
    (:class:`~unimim.train.interrupt.TrainingInterrupted`)."""
    run_dir = cfg.run_dir
    ckpt_path = run_dir / CHECKPOINT_NAME
    check_loggers(cfg.train.loggers)  # a logger asked for and not installed: fail before the engine starts
    resolved = to_dict(cfg)
    n_params = sum(p.numel() for p in objective.parameters() if p.requires_grad)  # before ZeRO-3 partitions them
    world = dist_utils.launch_world_size() if cfg.deepspeed.enabled else 1
    global_batch = cfg.effective_batch * world
    lr = peak_lr(cfg.optim, global_batch)
    schedule = cosine_with_warmup(lr, cfg.optim.min_lr, cfg.train.steps, cfg.optim.warmup_steps)
    wd_schedule = weight_decay_schedule(cfg.optim, cfg.train.steps)
    totals = RunTotals()  # elapsed seconds and FLOPs since step 0: the checkpoint's on resume, then the loop's
    if cfg.deepspeed.enabled:
        if optimizer is not None:
            raise ValueError("a custom optimizer is not supported under DeepSpeed")
        engine = _build_deepspeed(cfg, objective, schedule, wd_schedule)
        store = DeepSpeedCheckpoints(engine, run_dir, resolved, totals)
    else:
        engine = SingleProcessEngine(
            objective, (optimizer or partial(build_optimizer, cfg=cfg.optim))(objective), schedule,
            device=resolve_device(cfg.train.device),
            accumulate=cfg.train.accumulate, clip_grad=cfg.optim.clip_grad, clip_mode=cfg.optim.clip_mode,
            wd_schedule=wd_schedule, precision=cfg.train.precision,
        )
    if cfg.train.compile:
        compile_blocks(objective, engine.device)
    log.info("%s/%s: %.2fM trainable parameters, peak lr %.3g (global batch %d = %d processes x %d), %d examples, "
             "device %s", cfg.modality, cfg.objective, n_params / 1e6, lr, global_batch, engine.world_size,
             cfg.effective_batch, len(source), engine.device)

    start = 0  # the step resumed from; totals: what the run has spent up to it (advanced by the loop)
    if cfg.deepspeed.enabled:
        if cfg.train.resume:
            start = store.resume(partial(check_resumable, allowed=resumable))
        save = store.save
    else:
        if cfg.train.resume and has_checkpoint(run_dir):
            ckpt = load_checkpoint(run_dir, map_location=engine.device)
            check_resumable(ckpt["config"], resolved, resumable)
            objective.load_state_dict(ckpt["model"])
            engine.load_state_dict(ckpt["engine"])
            set_rng_state(ckpt["rng"])
            start = int(ckpt["step"])
            totals.update(RunTotals.from_dict(ckpt.get("totals")))
        saved = {"step": start}

        def save(step: int) -> str:
            try:
                save_checkpoint(ckpt_path, model=objective, engine=engine, step=step, config=resolved,
                                totals=totals.as_dict())
            except OSError as e:
                kept = (f"the checkpoint of step {saved['step']} is kept" if ckpt_path.is_file()
                        else "no earlier checkpoint exists")
                raise OutputError(f"cannot write the checkpoint of step {step} to {ckpt_path}: "
                                  f"{describe_os_error(e)}; {kept}") from None
            saved["step"] = step
            return str(ckpt_path)

    if start:
        log.info("resumed from %s at step %d", run_dir, start)
    if engine.is_main:
        write_config(cfg, run_dir)

    end = cfg.train.steps if cfg.train.stop_after is None else min(cfg.train.steps, start + cfg.train.stop_after)
    budget = cfg.train.max_seconds
    if start >= end:
        log.info("run %s is already complete (%d/%d steps)", run_dir, start, cfg.train.steps)
        return _result(run_dir, [], start, "complete", totals)
    if budget is not None and totals.elapsed_s >= budget:  # the same checkpoint on every process: all agree
        log.info("run %s is already at its wall-clock budget (%.1f s >= train.max_seconds=%g) at step %d of %d",
                 run_dir, totals.elapsed_s, budget, start, cfg.train.steps)
        return _result(run_dir, [], start, "max_seconds", totals)

    loader = make_loader(source, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                         start=start * cfg.train.accumulate, num_workers=cfg.train.num_workers,
                         collate_fn=source.collate, rank=dist_utils.rank(), world_size=engine.world_size)
    metrics = (MetricsWriter(run_dir, start_step=start, loggers=cfg.train.loggers, run_name=cfg.name, config=resolved,
                             wandb_project=cfg.train.wandb_project) if engine.is_main else NullMetrics())
    batches = iter(loader)
    watchdog: Any = contextlib.nullcontext()
    if engine.world_size > 1:  # a hung peer must not block this process past deepspeed.timeout_s, on any backend
        watchdog = dist_utils.Watchdog(cfg.deepspeed.timeout_s)
        batches, save = _beating(batches, watchdog.beat), _beating_save(save, watchdog.beat)
    try:
        with stop_on_signals() as stop_requested, watchdog:
            losses = train_loop(
                objective, engine, batches, start_step=start, total_steps=end,
                accumulate=cfg.train.accumulate, samples_per_step=global_batch,
                log_every=cfg.train.log_every, checkpoint_every=cfg.train.checkpoint_every, save=save,
                metrics=metrics, progress=progress, stop_requested=stop_requested, desc=desc,
                last_checkpoint=f"{ckpt_path} (step {start})" if start else None, totals=totals,
                max_seconds=budget,  # the lr schedule still spans train.steps
            )
    except RuntimeError as e:
        lost = dist_utils.peer_failure(e, "during training") if engine.world_size > 1 else None
        if lost is not None:
            raise lost from e
        raise
    finally:
        metrics.close()
    if start + len(losses) < end:  # the loop ended early: the wall-clock budget was spent
        return _result(run_dir, losses, start, "max_seconds", totals)
    if end < cfg.train.steps:
        log.info("stopped after step %d of %d (train.stop_after); run the same command to continue", end,
                 cfg.train.steps)
        return _result(run_dir, losses, start, "stop_after", totals)
    return _result(run_dir, losses, start, "steps", totals)


def _result(run_dir: Path, losses: list[float], start: int, stopped_by: str, totals: RunTotals) -> PretrainResult:
    return PretrainResult(run_dir=run_dir, losses=losses, start_step=start, stopped_by=stopped_by,
                          elapsed_s=totals.elapsed_s, flops=totals.flops)
