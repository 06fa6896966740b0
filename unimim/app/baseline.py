"""The raw-input baseline of an experiment config: the probes on the modality's raw features (pixels, TF-IDF,
log-mel), on exactly the splits the probes of its encoders use, with the same probe settings (``cfg.probe``)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from unimim.app.probe import probe_task
from unimim.app.registry import MODALITIES
from unimim.config import ConfigError
from unimim.eval.raw_baseline import raw_input_baseline
from unimim.train.engine import resolve_device

log = logging.getLogger(__name__)


def raw_baseline_run(cfg: Any, *, device: str | torch.device | None = None, progress: bool = False) -> dict[str, Any]:
    """:func:`~unimim.eval.raw_baseline.raw_input_baseline` on the probe splits of ``cfg`` (:func:`probe_task`),
    with the modality's extractor (``ModalitySpec.raw_baseline``), plus ``{"modality", "task"}``.

    When ``cfg``'s run directory exists (a pretrained run, ``config.yaml`` in ``train.out_dir/name``), the modality's
    inputs are bound to it as the probe binds them (text: the run's copy of its tokenizer); otherwise the config is
    read as it is. ``cfg`` itself is not changed. ``device``: None -- ``cfg.train.device``.
    """
    spec = MODALITIES[cfg.modality]
    if spec.raw_baseline is None:
        raise ConfigError(f"modality {cfg.modality!r} declares no raw-input baseline (ModalitySpec.raw_baseline)")
    cfg = copy.deepcopy(cfg)
    run_dir = getattr(cfg, "run_dir", None)
    if spec.bind_run_dir is not None and run_dir is not None and (run_dir / "config.yaml").is_file():
        spec.bind_run_dir(cfg.data, run_dir)
    task = probe_task(cfg)
    extractor = spec.raw_baseline(cfg)
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    log.info("raw-input baseline of %s task %s: %s", cfg.modality, task.name, extractor.name)
    result = raw_input_baseline(task.train, task.test, task.eval_collate, extractor, cfg.probe, device=device,
                                batch_size=max(cfg.train.batch_size, 256), num_workers=cfg.train.num_workers,
                                seed=cfg.train.seed, progress=progress)
    return {"modality": cfg.modality, "task": task.name} | result
