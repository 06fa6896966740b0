"""Metrics sinks: one JSON line per logged step in the run directory (always), plus TensorBoard and Weights & Biases.

``loggers`` picks the sinks beside JSONL: ``None`` (the default) adds TensorBoard when it is installed;
``["tensorboard"]``, ``["wandb"]`` or both add exactly those, and one that is not installed is a
:class:`~unimim.config.ConfigError` naming the package to install, before anything is written.

A run that resumes at step N keeps the lines of steps <= N and drops the later ones (logged after the checkpoint
it resumes from, by the run that was killed), so every step appears once; TensorBoard hides the same events
(``purge_step``). A run from step 0 starts an empty file. W&B: the run directory remembers its W&B run id
(``wandb_run_id``), so a resumed run continues the same W&B run (``resume="allow"``); W&B ignores the steps it has
already seen, which a resumed run repeats on the same trajectory. Files go under ``run_dir/wandb/``; with
``WANDB_MODE=offline`` nothing leaves the machine (``wandb sync`` uploads them later).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unimim.config import ConfigError
from unimim.train.run_dir import OutputError, describe_os_error

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
WANDB_ID_NAME = "wandb_run_id"
LOGGERS = ("jsonl", "tensorboard", "wandb")
_INSTALL = {"tensorboard": ("tensorboard", "pip install 'unimim[tensorboard]'"),
            "wandb": ("wandb", "pip install 'unimim[wandb]'")}


def _installed(module: str) -> bool:
    if module in sys.modules:  # imported already (or blocked: None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check_loggers(loggers: Sequence[str] | None) -> None:
    """Refuse an unknown logger, or one asked for that is not installed (a one-line :class:`ConfigError`)."""
    for name in loggers or ():
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: unknown logger {name!r}; available: {list(LOGGERS)}")
        if name in _INSTALL and not _installed(_INSTALL[name][0]):
            raise ConfigError(f"train.loggers asks for {name}, which is not installed: {_INSTALL[name][1]}")


def _rows_up_to(path: Path, step: int) -> list[str]:
    """The lines of ``path`` for steps <= ``step`` (a torn last line of a killed run is dropped too)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    return kept


class MetricsWriter:
    """Writes ``run_dir/metrics.jsonl`` for a run that starts (or resumes) at ``start_step``, and the ``loggers``
    beside it (module docstring). ``run_name`` and ``config`` (the resolved config as a dict) label the W&B run."""

    def __init__(self, run_dir: str | Path, *, start_step: int = 0, loggers: Sequence[str] | None = None,
                 run_name: str | None = None, config: dict[str, Any] | None = None,
                 wandb_project: str = "unimim") -> None:
        check_loggers(loggers)
        self.path = Path(run_dir) / METRICS_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = _rows_up_to(self.path, start_step)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
            self._file = self.path.open("a")
        except OSError as e:
            raise OutputError(f"cannot write metrics {self.path}: {describe_os_error(e)}") from None
        self._tb = None
        if loggers is None and not _installed("tensorboard"):
            log.debug("tensorboard not installed; metrics go to %s only", self.path)
        elif loggers is None or "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            # events of steps > start_step (a killed run's) are hidden
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)
        self._wandb = None
        if loggers is not None and "wandb" in loggers:
            self._wandb = _start_wandb(Path(run_dir), run_name, config, wandb_project, new=start_step == 0)

    def write(self, step: int, values: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps({"step": step, **values}) + "\n")
            self._file.flush()
        except OSError as e:
            raise OutputError(f"cannot write metrics {self.path}: {describe_os_error(e)}") from None
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed write was reported already
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run_dir: Path, run_name: str | None, config: dict[str, Any] | None, project: str, *,
                 new: bool) -> Any:
    """A W&B run logging into ``run_dir/wandb/``, its id kept in ``run_dir/wandb_run_id``: a resumed run continues
    it, a run from step 0 (``new``) starts another."""
    import wandb

    id_path = run_dir / WANDB_ID_NAME
    try:
        run_id = id_path.read_text().strip() if id_path.is_file() and not new else ""
        if not run_id:
            run_id = uuid.uuid4().hex[:16]
            id_path.write_text(run_id + "\n")
    except OSError as e:
        raise OutputError(f"cannot write {id_path}: {describe_os_error(e)}") from None
    return wandb.init(project=project, name=run_name, id=run_id, resume="allow", dir=str(run_dir),
                      config=config)


class NullMetrics:
    """The metrics sink of every process but the main one in a multi-process run: values are already reduced
    across processes, and one writer owns the file."""

    def write(self, step: int, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
