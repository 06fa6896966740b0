"""Checkpoints of a DeepSpeed run: DeepSpeed's own sharded save / load on every rank, plus an export of the
consolidated fp32 weights to the project's checkpoint format (``model.safetensors`` + ``training_state.pt``, read by
``unimim probe``). Nothing is unpickled beyond tensors and plain data: our files are read with
``torch.load(weights_only=True)``, and DeepSpeed's own reads go through :class:`WeightsOnlyCheckpointEngine`.

Layout of a run directory (it must be on a filesystem every node sees, as DeepSpeed's checkpoints require)::

    deepspeed/latest                 name of the newest complete tag (written by DeepSpeed after all ranks saved)
    deepspeed/step{N}/               DeepSpeed's files (module, per-rank ZeRO optimizer shards) and ours:
        unimim.pt                    step, the run's totals (elapsed seconds, FLOPs), resolved config, world size,
                                     the objective's extra state (EMA teacher)
        rng_rank{r}.pt               each rank's RNG states (tensors, lists, ints)
    model.safetensors                consolidated fp32 student + teacher, in the single-process format, with
    training_state.pt                the step, the run's totals, the config and the tag it was exported from
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unimim.config import ConfigError
from unimim.train import distributed as dist_utils
from unimim.train.checkpoint import (
    CHECKPOINT_NAME,
    atomic_save,
    rng_state,
    safe_load,
    set_rng_state,
    write_checkpoint,
)
from unimim.train.ds_engine import DeepSpeedEngine
from unimim.train.progress import RunTotals
from unimim.train.run_dir import OutputError, describe_os_error

log = logging.getLogger(__name__)

DS_DIR = "deepspeed"
UNIMIM_STATE_VERSION = 2  # unimim.pt: 1 had no version and numpy RNG arrays (still read, weights-only)


def _deepspeed_plain_classes() -> list[Any]:
    """The classes DeepSpeed puts in its checkpoint files beside tensors and plain data: the loss scaler (ZeRO
    optimizers store the object), the ZeRO stage (an int enum), the bf16 optimizer's slice addresses (a dataclass).
    Unpickling them sets attributes and runs none of the file's code; every other class stays refused."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class WeightsOnlyCheckpointEngine:
    """DeepSpeed's checkpoint engine with ``load`` reading weights-only (DeepSpeed's ``TorchCheckpointEngine``
    unpickles with weights-only off); saving and everything else go to the engine it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.allowed = _deepspeed_plain_classes()

    def __getattr__(self, name: str) -> Any:  # only for what this class does not define
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, "DeepSpeed checkpoint file", map_location, allow=self.allowed)


def _extra_state(model: torch.nn.Module) -> dict[str, Any]:
    """The objective's non-parameter state (``get_extra_state``: the EMA teacher, its update count)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith("_extra_state")}


class DeepSpeedCheckpoints:
    """Save / resume a DeepSpeed run in ``run_dir``; ``config`` is the resolved experiment config (a dict).
    ``totals``: the run's totals, shared with the training loop (which advances them): each save stores them,
    :meth:`resume` sets them to the checkpoint's."""

    def __init__(self, engine: DeepSpeedEngine, run_dir: str | Path, config: dict[str, Any],
                 totals: RunTotals | None = None) -> None:
        self.engine = engine
        self.totals = totals if totals is not None else RunTotals()
        self.run_dir = Path(run_dir)
        self.save_dir = self.run_dir / DS_DIR
        self.config = config
        ds = engine.ds
        if not isinstance(ds.checkpoint_engine, WeightsOnlyCheckpointEngine):
            ds.checkpoint_engine = WeightsOnlyCheckpointEngine(ds.checkpoint_engine)

    def save(self, step: int) -> str:
        """Every rank writes its shard of step ``step``; rank 0 then prunes older tags and exports
        ``model.safetensors`` + ``training_state.pt``. Returns the exported weights' path. A write that fails (disk
        full, no permission) is one :class:`~unimim.train.run_dir.OutputError`; the previous complete tag and export
        are kept."""
        try:
            return self._save(step)
        except OSError as e:
            raise OutputError(f"rank {self.engine.rank}: cannot write the DeepSpeed checkpoint of step {step} in "
                              f"{self.save_dir}: {describe_os_error(e)}; the previous checkpoint is kept") from None

    def _save(self, step: int) -> str:
        tag = f"step{step}"
        e = self.engine
        tag_dir = self.save_dir / tag
        if e.is_main:
            tag_dir.mkdir(parents=True, exist_ok=True)
            atomic_save({"version": UNIMIM_STATE_VERSION, "step": step, "totals": self.totals.as_dict(),
                         "config": self.config,
                         "world_size": e.world_size, "extra_state": _extra_state(e.objective)}, tag_dir / "unimim.pt")
        dist_utils.barrier()
        atomic_save(rng_state(), tag_dir / f"rng_rank{e.rank}.pt")
        e.ds.save_checkpoint(str(self.save_dir), tag=tag)  # every rank; 'latest' is updated once all have saved
        dist_utils.barrier()
        full = e.full_state_dict()  # collective: every rank takes part in gathering the fp32 master weights
        path = self.run_dir / CHECKPOINT_NAME
        if e.is_main:
            for old in self.save_dir.glob("step*"):
                if old.name != tag and old.is_dir():
                    shutil.rmtree(old)
            write_checkpoint(self.run_dir, model_state=full, engine_state={"deepspeed": str(tag_dir)}, step=step,
                             config=self.config, totals=self.totals.as_dict())
            log.info("saved DeepSpeed checkpoint %s and the consolidated fp32 export %s", tag_dir, path)
        dist_utils.barrier()
        return str(path)

    def resume(self, check_config: Callable[[dict[str, Any], dict[str, Any]], None]) -> int:
        """Load the newest complete checkpoint on every rank and return its step (0 when there is none); the
        run's totals become the checkpoint's.
        ``check_config(saved, current)`` raises when the run's config changed in a way that breaks resumption."""
        latest = self.save_dir / "latest"
        if not latest.is_file():
            return 0
        tag = latest.read_text().strip()
        tag_dir = self.save_dir / tag
        info_path, rng_path = tag_dir / "unimim.pt", tag_dir / f"rng_rank{self.engine.rank}.pt"
        for p in (info_path, rng_path):
            if not p.is_file():
                raise RuntimeError(f"DeepSpeed checkpoint {tag_dir} is incomplete: {p.name} is missing")
        if self.engine.ds.load_universal_checkpoint():
            raise ConfigError("checkpoint.load_universal in the DeepSpeed config is not supported: DeepSpeed reads "
                              "universal checkpoints with a full unpickler; remove it from deepspeed.config")
        info = safe_load(info_path, "DeepSpeed checkpoint state", "cpu")
        check_config(info["config"], self.config)
        if info["world_size"] != self.engine.world_size:
            raise ConfigError(
                f"cannot resume {tag_dir}: it was written by {info['world_size']} processes, this job has "
                f"{self.engine.world_size} (the global batch and the data order would change); launch "
                f"{info['world_size']} processes, or train.resume=false to start over"
            )
        load_path, _ = self.engine.ds.load_checkpoint(str(self.save_dir), tag=tag)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load its checkpoint {tag_dir}")
        self.engine.objective.load_state_dict(info["extra_state"], strict=False)  # teacher + update count
        set_rng_state(safe_load(rng_path, "DeepSpeed checkpoint RNG state", "cpu"))
        self.totals.update(RunTotals.from_dict(info.get("totals")))
        return int(info["step"])
