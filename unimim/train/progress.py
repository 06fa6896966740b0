"""Where a run stands: the totals it has spent since its step 0 (training wall-clock seconds, training FLOPs),
carried across resumes by its checkpoints, and :func:`run_progress`, which reads them from a run directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors

from unimim.train.checkpoint import checkpoint_paths, has_checkpoint, load_checkpoint


@dataclass
class RunTotals:
    """What a run has spent since its step 0, over all its invocations.

    Attributes:
        elapsed_s: training wall-clock seconds (the time between a kill and the resume is not in it).
        flops: training FLOPs summed over the processes (:mod:`unimim.train.flops`).
        flops_estimated: some of ``flops`` were estimated (more distinct batch shapes than were counted).
    """

    elapsed_s: float = 0.0
    flops: float = 0.0
    flops_estimated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> RunTotals:
        """The totals a checkpoint recorded (zeros for one written before runs recorded them)."""
        values = values or {}
        return cls(elapsed_s=float(values.get("elapsed_s", 0.0)), flops=float(values.get("flops", 0.0)),
                   flops_estimated=bool(values.get("flops_estimated", False)))

    def update(self, other: RunTotals) -> None:
        """Take ``other``'s values (the object is shared with the code that saves checkpoints)."""
        self.elapsed_s, self.flops, self.flops_estimated = other.elapsed_s, other.flops, other.flops_estimated


def _header(weights: Path) -> dict[str, str]:
    """The metadata of a safetensors file, read from its header (no tensor is loaded)."""
    try:
        with safetensors.safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # not a safetensors file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"could not read the checkpoint header of {weights}: {first}") from None


def run_progress(run_dir: str | Path) -> dict[str, Any]:
    """``{"step", "elapsed_s", "flops", "flops_estimated"}`` of the latest checkpoint in ``run_dir`` (the
    single-process format, which DeepSpeed runs export too), read from the header of its ``model.safetensors``
    without loading the weights. A run directory without a checkpoint yet is at step 0 with nothing spent; a
    checkpoint written before runs recorded their totals gives ``None`` for them (a version-1 ``checkpoint.pt`` is
    loaded whole for its step)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    unknown = {"elapsed_s": None, "flops": None, "flops_estimated": None}
    if not has_checkpoint(run_dir):
        return {"step": 0, **RunTotals().as_dict()}
    weights, _ = checkpoint_paths(run_dir)
    if not weights.is_file():  # a version-1 checkpoint, or an incomplete pair (load_checkpoint says which)
        return {"step": int(load_checkpoint(run_dir)["step"]), **unknown}
    meta = _header(weights)
    if "step" not in meta:
        raise RuntimeError(f"{weights} is not a unimim checkpoint (no step in its header)")
    if "totals" not in meta:
        return {"step": int(meta["step"]), **unknown}
    return {"step": int(meta["step"]), **RunTotals.from_dict(json.loads(meta["totals"])).as_dict()}
