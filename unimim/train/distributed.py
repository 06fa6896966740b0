"""Process-group plumbing for multi-process training: start-up from the launcher's environment, rank queries,
cross-rank metric means, and a clear error when another process is lost.

Launchers (``deepspeed``, ``torchrun``, ``srun`` via recipes/launch/slurm.sbatch) export RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without them (a plain ``unimim pretrain --deepspeed ...``) the process
is a world of one on a free loopback port, whose variables exist only while the run does (:func:`launch_env`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective failed or timed out: another process died, hung or was unreachable."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_launch_env() -> list[str]:
    """Fill in a world of one when no launcher set the rendezvous variables (all of them or none); returns the
    names it set (none under a launcher)."""
    present = [k for k in LAUNCH_ENV if k in os.environ]
    if present and len(present) < len(LAUNCH_ENV):
        missing = [k for k in LAUNCH_ENV if k not in os.environ]
        raise DistributedError(f"incomplete launcher environment: {present} set but {missing} missing")
    if present:
        return []
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    return list(LAUNCH_ENV)


@contextlib.contextmanager
def launch_env() -> Iterator[None]:
    """The rendezvous variables for the duration of a run (:func:`ensure_launch_env`). Those of a world of one are
    removed when the run ends, so that what the caller starts later (a launcher, another run in a child process)
    does not inherit a port this process still holds."""
    added = ensure_launch_env()
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def init_distributed(timeout_s: float) -> None:
    """Join the process group (DeepSpeed's communication backend: NCCL on GPUs, gloo with DS_ACCELERATOR=cpu).

    ``timeout_s`` bounds every collective: a process that stops answering makes the others fail after it.
    Inside :func:`launch_env` the variables of a world of one last as long as the run; without it they stay."""
    import deepspeed

    ensure_launch_env()
    if dist.is_initialized():
        return
    deepspeed.init_distributed(timeout=timedelta(seconds=timeout_s), auto_mpi_discovery=False, verbose=False)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def launch_world_size() -> int:
    """The job's process count as the launcher announced it (before the process group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over all processes, in one all-reduce (keys must be the same on every rank)."""
    if world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)  # (V,)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


PEER_FAILURE_SIGNS = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out",
                      "timeout", "socket", "process group")


def peer_failure(err: BaseException, where: str) -> DistributedError | None:
    """A failed collective (another process died, hung past ``deepspeed.timeout_s`` or became unreachable), as an
    error that says so; ``None`` when ``err`` does not come from the communication backend."""
    text = str(err).lower()
    if not (isinstance(err, dist.DistBackendError) or any(s in text for s in PEER_FAILURE_SIGNS)):
        return None
    return DistributedError(
        f"rank {rank()}/{world_size()}: lost contact with another process {where} — it died, hung or became "
        f"unreachable, so this process stops too (see the other ranks' logs). Backend said: {type(err).__name__}: "
        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    )


class Watchdog:
    """Ends this process when it makes no progress for ``timeout_s`` (``deepspeed.timeout_s``).

    A collective blocked on a peer that hangs (stopped with SIGSTOP, deadlocked, swapping) does not reliably time
    out by itself (gloo on the CPU waits on a connection that is still open), and a blocked collective cannot be
    interrupted from Python: so a thread watches the time since the last :meth:`beat` (each micro-batch and each
    checkpoint write beat) and, past the bound, logs the same clear error as a failed collective and exits the
    process with status :attr:`EXIT_CODE`. Use it as a context manager around the training loop."""

    EXIT_CODE = 1

    def __init__(self, timeout_s: float, where: str = "during training") -> None:
        self.timeout_s = timeout_s
        self.where = where
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="unimim-watchdog", daemon=True)

    def beat(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout_s / 10)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                log.error("rank %d/%d: lost contact with another process %s — no progress for %.0f s "
                          "(deepspeed.timeout_s=%g): another process died, hung or became unreachable, so this "
                          "process stops too (see the other ranks' logs)", rank(), world_size(), self.where, idle,
                          self.timeout_s)
                for handler in logging.getLogger().handlers:
                    handler.flush()
                sys.stderr.flush()
                os._exit(self.EXIT_CODE)

    def __enter__(self) -> Watchdog:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
