"""A run directory belongs to one run at a time: made with clear errors, locked against a second concurrent run,
cleaned of the partial files a killed run leaves, and set aside when a run starts over.

    RUN_DIR/.lock                      held (``fcntl.flock``) by the process that trains in the directory; holds its
                                       pid. A second run in the same directory stops at once with a clear error.
    RUN_DIR/replaced-YYYYmmdd-HHMMSS/  what the previous run left (checkpoint, metrics, TensorBoard events, DeepSpeed
                                       shards, config, probe results, ...), moved here by ``train.resume=false``:
                                       starting over never appends to or deletes an earlier run's files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from unimim.config import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
REPLACED_PREFIX = "replaced-"
PARTIAL_PATTERNS = (".*.tmp", "deepspeed/*/.*.tmp")  # atomic_save's temporary files, left by a killed run


class OutputError(RuntimeError):
    """The run's output cannot be written (disk full, no permission, read-only filesystem)."""


class RunLockedError(RuntimeError):
    """Another run holds the run directory."""


def describe_os_error(e: OSError) -> str:
    """``ENOSPC (No space left on device)``: the errno's name and its text."""
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    text = e.strerror or str(e)
    return f"{name} ({text})" if name else text


def make_run_dir(run_dir: Path, out_dir: str | Path) -> None:
    """Create ``run_dir``; a file where a directory should be, or an unwritable place, is one clear error."""
    for p in [run_dir, *run_dir.parents]:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"train.out_dir={str(out_dir)!r}: {p} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the run directory {run_dir}: {describe_os_error(e)}") from None


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock file for the duration of a run; raise :class:`RunLockedError` if another holds it."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"cannot create the lock file {path}: {describe_os_error(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(f"run directory {run_dir} is in use by another run (pid {holder}, lock file {path}); "
                                 "wait for it to end, or use another name=...") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a run that just opened it)


def remove_partial_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoints that a killed run did not finish writing; returns them."""
    removed = [p for pattern in PARTIAL_PATTERNS for p in run_dir.glob(pattern) if p.is_file()]
    for p in removed:
        p.unlink()
        log.info("removed %s (an unfinished checkpoint write of an earlier run)", p)
    return removed


def set_aside(run_dir: Path) -> Path | None:
    """Move everything an earlier run left in ``run_dir`` (but the lock and earlier set-asides) into
    ``run_dir/replaced-<time>/``; returns that directory, or ``None`` when there was nothing to move."""
    keep = {LOCK_NAME}
    present = sorted(p for p in run_dir.iterdir() if p.name not in keep and not p.name.startswith(REPLACED_PREFIX))
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = run_dir / f"{REPLACED_PREFIX}{stamp}", 1
    while dest.exists():
        n += 1
        dest = run_dir / f"{REPLACED_PREFIX}{stamp}-{n}"
    try:
        dest.mkdir()
        for p in present:
            p.rename(dest / p.name)
    except OSError as e:
        raise OutputError(f"cannot move the previous run's files into {dest}: {describe_os_error(e)}") from None
    log.warning("train.resume=false: starting over; the previous run's files are now in %s", dest)
    return dest
