"""Checkpoints: written atomically, restored exactly (weights, teacher, optimizer, step, RNG states, resolved
config), and read without unpickling anything that could run code.

A checkpoint (format version 2) is a pair of files in one directory (the run directory)::

    model.safetensors     the objective's state dict: every tensor (student, teacher, buffers) in safetensors; the
                          non-tensor leaves of its extra state (the teacher's update count, ...) as JSON in the
                          file's metadata, with the format, its version, the step and the run's totals (elapsed
                          seconds, FLOPs: :mod:`unimim.train.progress` reads them from the header alone)
    training_state.pt     what resuming needs beside the weights: the engine's state (optimizer, loss scaler), the
                          step, the run's totals, the RNG states (tensors, lists, ints), the resolved config (a plain
                          dict); a ``torch.save`` file read back with ``torch.load(weights_only=True)``

Both are written to temporary files first, then renamed (weights first); the step is recorded in both and a pair
whose steps differ (a write interrupted between the two renames) is refused. A version-1 checkpoint (one pickle,
``checkpoint.pt``) is read with ``weights_only=True`` too, numpy's array reconstruction allowed and nothing else;
every other Python object in a file is refused with a one-line error (:class:`UnsafeFileError`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.safetensors"  # the weights of a checkpoint; its training state lies beside it
TRAINING_STATE_NAME = "training_state.pt"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # format version 1: one pickle (read with weights_only=True only)
FORMAT = "unimim-checkpoint"
FORMAT_VERSION = 2
LEGACY_VERSION = 1

_TENSOR, _TUPLE = "__tensor__", "__tuple__"  # markers in the JSON skeleton of non-tensor state


class UnsafeFileError(RuntimeError):
    """A file holds Python objects other than tensors and plain data: unpickling it could run code."""


# --- RNG states as plain data -------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """The RNG states of Python, numpy and torch (and CUDA when present) as tensors, lists and ints, which
    ``torch.load(weights_only=True)`` reads; :func:`set_rng_state` restores them exactly."""
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output (also the version-1 layout: Python's tuple, numpy's ``get_state()``)."""
    py = state["python"]
    if isinstance(py, dict):
        py = (int(py["version"]), tuple(int(v) for v in py["internal"]), py["gauss_next"])
    random.setstate(py)
    npy = state["numpy"]
    if isinstance(npy, dict):
        key = np.asarray(npy["key"].numpy() if torch.is_tensor(npy["key"]) else npy["key"]).astype(np.uint32)
        npy = (npy["bit_generator"], key, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- atomic writes ------------------------------------------------------------------------------------------------

def _temporary(path: Path) -> Path:
    """A new temporary file beside ``path`` (``.NAME.XXXX.tmp``: run directories clean these up after a kill)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(writes: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every file to a temporary file beside it (``write(tmp)``), fsync them, then rename them in order."""
    tmps: list[Path] = []
    try:
        for path, write in writes:
            tmps.append(_temporary(Path(path)))
            write(tmps[-1])
            _fsync(tmps[-1])
        for (path, _), tmp in zip(writes, tmps, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``. ``obj`` should be
    tensors and plain data (dict, list, tuple, str, int, float, bool, None): :func:`safe_load` reads nothing else."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    _write_all([(Path(path), write)])


# --- reading torch files without running code ---------------------------------------------------------------------

def _numpy_array_globals() -> list[Any]:
    """What a pickled numeric numpy array names: its reconstruct function, ndarray, dtype and the dtype classes.
    None of them runs code from the file (an object array's elements go through the same restricted unpickler)."""
    core = getattr(np, "_core", None) or np.core
    names: list[Any] = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n != "ObjectDType"]
    return names


@contextmanager
def _allowed(extra: list[Any]) -> Iterator[None]:
    with torch.serialization.safe_globals(_numpy_array_globals() + list(extra)):
        yield


def _refusal_reason(e: Exception) -> str:
    """The short reason in torch's long weights-only error (``it names posix.system``)."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if m:
        return f"it names {m.group(1)}"
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", str(e))
    return m.group(1).strip().rstrip(".") if m else str(e).splitlines()[0]


def safe_load(path: str | Path, what: str, map_location: str | torch.device | None = "cpu", *,
              allow: list[Any] | None = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data (and numeric numpy arrays, plus the classes
    in ``allow``) come back; a file naming any other Python object is refused with :class:`UnsafeFileError`, a
    file that is not a torch file with a ``RuntimeError``. ``what`` names the file in the messages."""
    path = Path(path)
    try:
        with _allowed(allow or []):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"refused to read {what} {path}: it holds a Python object other than tensors and plain data "
            f"({_refusal_reason(e)}), which unpickling could run as code; unimim reads only the files it writes"
        ) from None
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"could not read {what} {path}: {first}") from None


# --- a state dict in safetensors ----------------------------------------------------------------------------------

def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON skeleton of a non-tensor state value; its tensors go to ``tensors`` under ``name/...``."""
    if torch.is_tensor(value):
        tensors[name] = value
        return {_TENSOR: name}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"state {name!r}: only str keys can be stored, got {list(value)!r}")
        return {k: _encode(v, f"{name}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"state {name!r}: a {type(value).__name__} cannot be stored in a checkpoint (tensors and plain "
                    "data only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_TUPLE}:
            return tuple(_decode(v, tensors) for v in value[_TUPLE])
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory with another (safetensors stores no aliases: a tied
    weight is stored twice and tied again by ``load_state_dict``)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else 0
        if ptr and ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def save_state_file(path: str | Path, state: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write a state dict (tensors, and non-tensor values made of dicts / lists / plain data, as a module's extra
    state) to ``path`` in safetensors, atomically; ``metadata`` goes into the file's header."""
    _write_all([(Path(path), _state_writer(state, metadata))])


def _state_writer(state: dict[str, Any], metadata: dict[str, str]) -> Callable[[Path], None]:
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if torch.is_tensor(v) and "/" in k:
            raise ValueError(f"state key {k!r}: '/' is reserved for the tensors of non-tensor state")
    skeleton = {k: _encode(v, k, tensors) for k, v in state.items() if not torch.is_tensor(v)}
    tensors.update({k: v for k, v in state.items() if torch.is_tensor(v)})
    header = {**metadata, "non_tensor_state": json.dumps(skeleton)}
    tensors = _unshared(tensors)

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(tensors, str(tmp), metadata=header)

    return write


def load_state_file(path: str | Path, what: str,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Read :func:`save_state_file`'s file: the state dict (in its original key order) and the header metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    device = str(map_location) if map_location is not None else "cpu"
    try:
        with safetensors.safe_open(str(path), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        skeleton = json.loads(metadata.pop("non_tensor_state", "{}"))
    except Exception as e:  # not a safetensors file (a pickle renamed, a truncated write, ...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"could not read {what} {path}: not a safetensors file ({first})") from None
    state = {k: v for k, v in tensors.items() if "/" not in k}
    state.update({k: _decode(v, tensors) for k, v in skeleton.items()})
    return state, metadata


# --- checkpoints --------------------------------------------------------------------------------------------------

def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights file, training-state file) of the checkpoint at ``path``: a directory (a run directory) or its
    weights file (``.../model.safetensors``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return path / CHECKPOINT_NAME, path / TRAINING_STATE_NAME
    if path.name == CHECKPOINT_NAME:
        return path, path.with_name(TRAINING_STATE_NAME)
    return path, path.with_name(f"{path.stem}.training_state.pt")


def _legacy_path(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".pt":
        return path
    directory = path if path.suffix != ".safetensors" else path.parent
    legacy = directory / LEGACY_CHECKPOINT_NAME
    return legacy if legacy.is_file() else None


def has_checkpoint(path: str | Path) -> bool:
    """Whether a checkpoint (either file of a pair, or a version-1 ``checkpoint.pt``) is at ``path``."""
    weights, training = checkpoint_paths(path)
    return weights.is_file() or training.is_file() or _legacy_path(Path(path)) is not None


def write_checkpoint(path: str | Path, *, model_state: dict[str, Any], engine_state: dict[str, Any], step: int,
                     config: dict[str, Any], totals: dict[str, Any] | None = None) -> None:
    """Write the pair at ``path`` (see :func:`checkpoint_paths`): both to temporary files, then renamed.
    ``totals``: what the run has spent up to ``step`` (plain numbers: :class:`unimim.train.progress.RunTotals`)."""
    weights, training = checkpoint_paths(path)
    totals = dict(totals or {})
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION), "step": str(int(step)), "totals": json.dumps(totals)}
    train_state = {"format": FORMAT, "version": FORMAT_VERSION, "step": int(step), "totals": totals,
                   "engine": engine_state, "rng": rng_state(), "config": config}

    def write_training(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(train_state, f)

    _write_all([(weights, _state_writer(model_state, meta)), (training, write_training)])


def save_checkpoint(
    path: str | Path, *, model: torch.nn.Module, engine: Any, step: int, config: dict[str, Any],
    totals: dict[str, Any] | None = None,
) -> None:
    """Save everything needed to continue the run at optimizer step ``step`` (= completed updates): the pair
    ``model.safetensors`` + ``training_state.pt`` at ``path`` (the run directory or its ``model.safetensors``),
    with the run's ``totals`` up to that step."""
    write_checkpoint(path, model_state=model.state_dict(), engine_state=engine.state_dict(), step=step,
                     config=config, totals=totals)
    log.info("saved checkpoint at step %d to %s", step, checkpoint_paths(path)[0])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"version", "step", "totals", "model", "engine", "rng", "config"}`` of the checkpoint at ``path`` (the run
    directory or its ``model.safetensors``; a version-1 ``checkpoint.pt`` is read when no pair is there). ``totals``
    is ``{}`` for a checkpoint written before runs recorded them. Nothing is unpickled but tensors and plain data."""
    path = Path(path)
    weights, training = checkpoint_paths(path)
    if not weights.is_file() and not training.is_file():
        legacy = _legacy_path(path)
        if legacy is None:
            raise FileNotFoundError(f"checkpoint not found: {weights}")
        return _load_legacy(legacy, map_location)
    for present, absent in ((weights, training), (training, weights)):
        if present.is_file() and not absent.is_file():
            raise RuntimeError(f"checkpoint incomplete: {present} has no {absent.name} beside it; restore it, or "
                               "start over with train.resume=false")
    model, meta = load_state_file(weights, "checkpoint weights", map_location)
    if meta.get("format") != FORMAT or meta.get("version") != str(FORMAT_VERSION):
        raise RuntimeError(f"{weights} is not a unimim checkpoint of format version {FORMAT_VERSION} "
                           f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    state = safe_load(training, "checkpoint training state", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != FORMAT_VERSION:
        raise RuntimeError(f"{training} is not a unimim training state of format version {FORMAT_VERSION}")
    if str(state["step"]) != meta.get("step"):
        raise RuntimeError(
            f"checkpoint pair mismatch: {weights} is of step {meta.get('step')}, {training} of step {state['step']} "
            "(a write was interrupted between the two renames); restore a consistent pair, or start over with "
            "train.resume=false"
        )
    return {"version": FORMAT_VERSION, "step": int(state["step"]), "totals": dict(state.get("totals") or {}),
            "model": model, "engine": state["engine"], "rng": state["rng"], "config": state["config"]}


def _load_legacy(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """A version-1 checkpoint (one ``torch.save`` pickle), read with ``weights_only=True``."""
    ckpt = safe_load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("version") != LEGACY_VERSION:
        raise RuntimeError(f"{path} is not a unimim checkpoint (format version {LEGACY_VERSION} or "
                           f"{FORMAT_VERSION})")
    log.info("read %s (checkpoint format version %d); the next save writes version %d (%s + %s)", path,
             LEGACY_VERSION, FORMAT_VERSION, CHECKPOINT_NAME, TRAINING_STATE_NAME)
    return ckpt
