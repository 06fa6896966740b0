"""Checkpoints: written atomically (temporary file + rename), restored exactly (weights, teacher, optimizer,
step, RNG states, resolved config)."""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | Path, *, model: torch.nn.Module, engine: Any, step: int, config: dict[str, Any]
) -> None:
    """Save everything needed to continue the run at optimizer step ``step`` (= completed updates)."""
    atomic_save(
        {
            "version": FORMAT_VERSION,
            "step": step,
            "model": model.state_dict(),
            "engine": engine.state_dict(),
            "rng": rng_state(),
            "config": config,
        },
        path,
    )
    log.info("saved checkpoint at step %d to %s", step, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise RuntimeError(f"could not read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("version") != FORMAT_VERSION:
        raise RuntimeError(f"{path} is not a unimim checkpoint of format version {FORMAT_VERSION}")
    return ckpt
