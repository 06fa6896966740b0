"""Metrics sink: one JSON line per logged step in the run directory, plus TensorBoard when it is installed.

A run that resumes at step N keeps the lines of steps <= N and drops the later ones (logged after the checkpoint
it resumes from, by the run that was killed), so every step appears once; TensorBoard hides the same events
(``purge_step``). A run from step 0 starts an empty file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from unimim.train.run_dir import OutputError, describe_os_error

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


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
    """Writes ``run_dir/metrics.jsonl`` for a run that starts (or resumes) at ``start_step``."""

    def __init__(self, run_dir: str | Path, *, start_step: int = 0, tensorboard: bool = True) -> None:
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
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional
                log.debug("tensorboard not installed; metrics go to %s only", self.path)
            else:  # events of steps > start_step (a killed run's) are hidden
                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)

    def write(self, step: int, values: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps({"step": step, **values}) + "\n")
            self._file.flush()
        except OSError as e:
            raise OutputError(f"cannot write metrics {self.path}: {describe_os_error(e)}") from None
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed write was reported already
            self._file.close()
        if self._tb is not None:
            self._tb.close()


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
