"""The experiment config: one typed section per component, chosen by ``modality`` and ``objective``.

```
name: d2v_fmnist            # run name (run directory: train.out_dir/name)
modality: image             # key of unimim.app.registry.MODALITIES
objective: data2vec         # key of unimim.app.registry.OBJECTIVES
encoder:  {...}             # EncoderConfig
adapter:  {...}             # the modality's adapter config
masking:  {...}             # the modality's mask config
data:     {...}             # the modality's data config
method:   {...}             # the objective's config (e.g. Data2VecConfig)
optim:    {...}             # OptimConfig
train:    {...}             # TrainConfig
deepspeed: {...}            # DeepSpeedConfig (enabled: true runs the recipe under DeepSpeed)
probe:    {...}             # ProbeConfig
init: hf:PATH | timm:NAME@FILE | run:RUN_DIR   # start from these weights (continued pretraining, unimim.app.init)
init_sha256: ...            # written by the run: the SHA-256 of the init weights (checked when given)
finetune: {...}             # FinetuneConfig (`unimim finetune RUN_DIR`)
task:     {...}             # the modality's labelled task (fine-tuning and probes), where it declares one
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from unimim.app.recipes import find_recipe, resolve_recipe
from unimim.app.registry import MODALITIES, OBJECTIVES
from unimim.config import ConfigError, load_config, read_yaml
from unimim.eval.finetune.config import FinetuneConfig
from unimim.eval.probe import ProbeConfig
from unimim.nn.encoder import EncoderConfig
from unimim.train.ds_engine import DeepSpeedConfig
from unimim.train.optim import OptimConfig


@dataclass
class TrainConfig:
    steps: int = 1000                 # optimizer steps
    batch_size: int = 64              # micro-batch per process
    accumulate: int = 1               # micro-batches per optimizer step
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    num_workers: int = 2              # DataLoader workers (masks and augmentation are made there)
    seed: int = 0
    out_dir: str = "runs"             # the run directory is out_dir/name
    log_every: int = 10               # optimizer steps between metric lines
    checkpoint_every: int = 500       # optimizer steps between checkpoints (and at the end)
    resume: bool = True               # continue from out_dir/name/model.safetensors when it exists; false: start over,
                                      # the earlier run's files moved to out_dir/name/replaced-<time>/
    threads: int | None = None        # torch intra-op threads (None = torch default)
    retain_freed_memory: bool = True  # glibc: freed large CPU buffers stay mapped for reuse, not page-faulted in
                                      # afresh at each allocation (unimim.train.host_memory; 3-4x on element-wise
                                      # ops over large tensors); false: glibc's defaults
    compile: bool = False             # torch.compile each transformer block (student and teacher; inductor, in
                                      # place: unimim.train.compile); the first step of each input shape compiles
    stop_after: int | None = None     # end this invocation after this many completed steps (a time-limited job
                                      # slice; the schedule still spans `steps`; the next invocation resumes)
    max_seconds: float | None = None  # a wall-clock budget: the run ends (with a checkpoint) after the first step
                                      # at which its training seconds since step 0 (over resumes) reach it; the lr
                                      # schedule still spans `steps`. May be raised on resume to continue
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] | None = None  # metric sinks beside JSONL (always
                                      # written); None: TensorBoard when installed. A listed one must be installed
    wandb_project: str = "unimim"     # W&B project; entity and mode from WANDB_ENTITY / WANDB_MODE (offline works)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulate", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"train.stop_after must be >= 1 or null, got {self.stop_after}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"train.max_seconds must be > 0 or null, got {self.max_seconds}")


class RunView:
    """What the training loop asks of a run's config, for the configs that have ``name`` and ``train`` fields (the
    pretraining experiment, one init of a fine-tune)."""

    name: str
    train: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.train.out_dir) / self.name

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step in one process (the global batch is this x the number of processes)."""
        return self.train.batch_size * self.train.accumulate


@dataclass
class ExperimentBase(RunView):
    name: str = "run"                 # the run directory is train.out_dir/name (a relative path, no '..')
    modality: str = "image"
    objective: str = "data2vec"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    init: str | None = None           # hf:PATH | timm:NAME@FILE | run:RUN_DIR: the student's (and teacher's) first
                                      # weights (unimim.app.init); a resumed run takes its checkpoint instead
    init_sha256: str | None = None    # recorded by the run (SHA-256 of the init weights); when set, it must match

    def __post_init__(self) -> None:
        if self.init is not None and not self.init.startswith(("hf:", "timm:", "run:")):
            raise ValueError(f"init={self.init!r} must be hf:PATH, timm:NAME@FILE or run:RUN_DIR")
        path = PurePosixPath(self.name)
        if not path.parts or not self.name.strip() or path.is_absolute() or "\\" in self.name or ".." in path.parts:
            raise ValueError(f"name={self.name!r} must be a relative path inside train.out_dir (no '..', not absolute)")


@cache
def experiment_type(modality: str, objective: str) -> type:
    """The concrete ExperimentConfig dataclass for one (modality, objective) pair."""
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; available: {sorted(MODALITIES)}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; available: {sorted(OBJECTIVES)}")
    spec, obj = MODALITIES[modality], OBJECTIVES[objective]
    if modality not in obj.modalities:
        raise ConfigError(f"objective {objective!r} supports modalities {obj.modalities}, not {modality!r}")
    sections = [
        ("adapter", spec.adapter_config, field(default_factory=spec.adapter_config)),
        ("masking", spec.mask_config, field(default_factory=spec.mask_config)),
        ("data", spec.data_config, field(default_factory=spec.data_config)),
        ("method", obj.config, field(default_factory=obj.config)),
    ]
    if spec.task_config is not None:  # the labelled data of fine-tuning and probes
        sections.append(("task", spec.task_config, field(default_factory=spec.task_config)))
    return make_dataclass(f"ExperimentConfig_{modality}_{objective}", sections, bases=(ExperimentBase,))


def _root_type(raw: dict[str, Any]) -> type:
    modality = raw.get("modality", ExperimentBase.modality)
    objective = raw.get("objective", ExperimentBase.objective)
    method = raw.get("method")
    if objective == "data2vec" and isinstance(method, dict) and "mode" in method:
        raise ConfigError("method.mode is gone: data2vec 2.0 is `objective: data2vec2` (was mode: v2), data2vec 1.0 "
                          "is `objective: data2vec` (mode: v1); remove method.mode")
    return experiment_type(modality, objective)


def check_experiment(cfg: Any) -> Any:
    """The checks of settings that only fail together, declared by the modality and the objective: at load time,
    not at the first forward. Returns ``cfg``."""
    for check in (MODALITIES[cfg.modality].check, OBJECTIVES[cfg.objective].check):
        if check is not None:
            try:
                check(cfg)
            except ValueError as e:
                raise ConfigError(f"{cfg.modality}/{cfg.objective}: {e}") from None
    return cfg


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Recipe file or name (``image/mae_fmnist_cpu``, :mod:`unimim.app.recipes`; ``base:`` chains merged) +
    ``key.sub=value`` overrides -> a validated experiment config."""
    return check_experiment(load_config(read_yaml(resolve_recipe(path), find_recipe), _root_type, overrides))


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Any:
    """A resolved config dict (e.g. a run directory's config.yaml) -> experiment config."""
    return check_experiment(load_config(raw, _root_type, overrides))
