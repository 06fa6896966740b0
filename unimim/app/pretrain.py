"""``unimim pretrain``: build the objective and its example source from a config, then run the library's
pretraining (:func:`unimim.train.run.run_pretraining`) inside its run context (process group, locked run
directory)."""

from __future__ import annotations

from typing import Any

from unimim.app.registry import MODALITIES, build_objective
from unimim.train.run import PretrainResult, prepare_process, run_context, run_pretraining


def pretrain(cfg: Any, *, progress: bool = True) -> PretrainResult:
    """Train ``cfg`` (an experiment config) in ``cfg.run_dir``; resume from its checkpoint when asked."""
    with run_context(cfg):
        prepare_process(cfg)  # seeds first: the objective's initial weights depend on them
        spec = MODALITIES[cfg.modality]
        if spec.bind_run_dir is not None:  # e.g. the text tokenizer is copied into the run directory
            spec.bind_run_dir(cfg.data, cfg.run_dir)
        source = spec.build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
        objective = build_objective(cfg)
        return run_pretraining(cfg, objective, source, progress=progress)
