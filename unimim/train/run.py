"""Pretraining entry point: config -> objective, data, engine -> the loop, with resume."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from unimim.config import ConfigError, to_dict
from unimim.registry import MODALITIES, build_objective
from unimim.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, set_rng_state
from unimim.train.data import make_loader
from unimim.train.engine import SingleProcessEngine, resolve_device
from unimim.train.loop import train_loop
from unimim.train.metrics import MetricsWriter
from unimim.train.optim import build_optimizer, peak_lr
from unimim.train.schedules import cosine_with_warmup

log = logging.getLogger(__name__)

# keys that may differ between a run and its resumption without changing the trajectory
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.checkpoint_every", "train.num_workers",
                     "train.resume", "train.threads", "train.device", "probe.")


@dataclass
class PretrainResult:
    run_dir: Path
    losses: list[float]   # per optimizer step run in this call
    start_step: int       # 0, or the step resumed from


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


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    a, b = _flatten(saved), _flatten(current)
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if diffs:
        detail = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs[:8])
        raise ConfigError(
            f"cannot resume: the config differs from the checkpoint's ({detail}). "
            "Use another name=..., or train.resume=false to start over in the same directory."
        )


def write_config(cfg: Any, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def pretrain(cfg: Any, *, progress: bool = True) -> PretrainResult:
    """Train ``cfg`` (an experiment config) in ``cfg.run_dir``; resume from its checkpoint when asked."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run_dir = cfg.run_dir
    ckpt_path = run_dir / CHECKPOINT_NAME
    resolved = to_dict(cfg)
    seed_everything(cfg.train.seed)

    spec = MODALITIES[cfg.modality]
    if spec.bind_run_dir is not None:  # e.g. the text tokenizer is copied into the run directory
        spec.bind_run_dir(cfg.data, run_dir)
    source = spec.build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
    objective = build_objective(cfg)
    device = resolve_device(cfg.train.device)
    lr = peak_lr(cfg.optim, cfg.effective_batch)
    schedule = cosine_with_warmup(lr, cfg.optim.min_lr, cfg.train.steps, cfg.optim.warmup_steps)
    engine = SingleProcessEngine(
        objective, build_optimizer(objective, cfg.optim), schedule, device=device,
        accumulate=cfg.train.accumulate, clip_grad=cfg.optim.clip_grad, precision=cfg.train.precision,
    )
    n_params = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    log.info("%s/%s: %.2fM trainable parameters, peak lr %.3g (effective batch %d), %d examples, device %s",
             cfg.modality, cfg.objective, n_params / 1e6, lr, cfg.effective_batch, len(source), device)

    start = 0
    if cfg.train.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        check_resumable(ckpt["config"], resolved)
        objective.load_state_dict(ckpt["model"])
        engine.load_state_dict(ckpt["engine"])
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
        log.info("resumed from %s at step %d", ckpt_path, start)
    write_config(cfg, run_dir)

    def save(step: int) -> str:
        save_checkpoint(ckpt_path, model=objective, engine=engine, step=step, config=resolved)
        return str(ckpt_path)

    if start >= cfg.train.steps:
        log.info("run %s is already complete (%d/%d steps)", run_dir, start, cfg.train.steps)
        return PretrainResult(run_dir=run_dir, losses=[], start_step=start)

    loader = make_loader(source, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                         start=start * cfg.train.accumulate, num_workers=cfg.train.num_workers,
                         collate_fn=spec.collate)
    metrics = MetricsWriter(run_dir)
    try:
        losses = train_loop(
            objective, engine, iter(loader), start_step=start, total_steps=cfg.train.steps,
            accumulate=cfg.train.accumulate, samples_per_step=cfg.effective_batch,
            log_every=cfg.train.log_every, checkpoint_every=cfg.train.checkpoint_every, save=save,
            metrics=metrics, progress=progress,
        )
    finally:
        metrics.close()
    return PretrainResult(run_dir=run_dir, losses=losses, start_step=start)
