"""``unimim pretrain``: build the objective and its example source from a config, then run the library's
pretraining (:func:`unimim.train.run.run_pretraining`) inside its run context (process group, locked run
directory). A fresh run with ``init:`` starts from those weights (:func:`unimim.app.init.initialise`)."""

from __future__ import annotations

import logging
from typing import Any

import yaml

from unimim.app.registry import MODALITIES, build_objective
from unimim.train.checkpoint import has_checkpoint
from unimim.train.run import PretrainResult, prepare_process, run_context, run_pretraining

log = logging.getLogger(__name__)


def will_resume(cfg: Any) -> bool:
    """Whether ``run_pretraining`` will continue a checkpoint of ``cfg.run_dir`` (single-process or DeepSpeed)."""
    run_dir = cfg.run_dir
    return cfg.train.resume and (has_checkpoint(run_dir) or (run_dir / "deepspeed" / "latest").is_file())


def pretrain(cfg: Any, *, progress: bool = True) -> PretrainResult:
    """Train ``cfg`` (an experiment config) in ``cfg.run_dir``; resume from its checkpoint when asked."""
    with run_context(cfg):
        prepare_process(cfg)  # seeds first: the objective's initial weights depend on them
        spec = MODALITIES[cfg.modality]
        if spec.bind_run_dir is not None:  # e.g. the text tokenizer is copied into the run directory
            spec.bind_run_dir(cfg.data, cfg.run_dir)
        source = spec.build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
        objective = build_objective(cfg)
        if cfg.init is not None:
            if will_resume(cfg):  # the checkpoint holds the weights; keep the recorded hash of where they began
                saved = cfg.run_dir / "config.yaml"
                if cfg.init_sha256 is None and saved.is_file():
                    cfg.init_sha256 = (yaml.safe_load(saved.read_text()) or {}).get("init_sha256")
                log.info("init: %s is not loaded again, the run resumes from its checkpoint", cfg.init)
            else:
                from unimim.app.init import initialise

                initialise(objective, cfg)
        return run_pretraining(cfg, objective, source, progress=progress)
