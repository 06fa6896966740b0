"""Stopping a run cleanly on SIGTERM (SLURM, cloud preemption) and SIGINT (Ctrl-C).

The first signal asks the training loop to stop: it finishes the optimizer step under way, writes a checkpoint
and raises :class:`TrainingInterrupted`, whose ``exit_code`` is 128 + the signal number (the ``unimim`` command
exits with it: 143 after SIGTERM, 130 after SIGINT, as a shell reports a process ended by that signal). Running
the same command again resumes. A second signal aborts at once, without a new checkpoint: SIGINT raises
``KeyboardInterrupt`` (the command exits with 130), SIGTERM takes its default action.

In a multi-process job every process learns of a signal any of them received at the next step's metric mean
(:func:`unimim.train.loop.train_loop`), so that all of them stop after the same step and save it together (those
that did not receive it themselves exit with 143, as after SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after a completed step and a checkpoint (not an error: resume continues it)."""

    def __init__(self, signum: int, step: int, checkpoint: str) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint: {checkpoint}; "
                         "run the same command to continue")


class StopRequest:
    """Set by the first stop signal; ``signum`` is the signal's number, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> int | None:
        return self.signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGTERM and SIGINT into a :class:`StopRequest` while the block runs (previous handlers restored after).
    Signal handlers exist in the main thread only; elsewhere the request never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if request.signum is None:
            request.signum = signum
            log.warning("%s received: stopping after the current optimizer step, once its checkpoint is written "
                        "(send it again to abort at once)", name)
            return
        log.warning("second %s: aborting without a new checkpoint", name)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
