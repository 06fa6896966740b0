"""SIGTERM (preemption) and SIGINT (Ctrl-C): the run finishes its step, checkpoints it and stops with 128 + the
signal number; the same command resumes; a second SIGINT aborts at once. In-process where the signal can be sent
from inside the run, and the ``unimim`` command in a subprocess (its own session, a timeout) for the exit status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import unimim.train.run as run_mod
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.train.checkpoint import load_checkpoint
from unimim.train.engine import SingleProcessEngine
from unimim.train.interrupt import TrainingInterrupted
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
ENDLESS = ["train.steps=100000", "train.checkpoint_every=100000", "train.precision=fp32"]


def tiny(out: Path, *extra: str):
    return load_recipe(RECIPE, tiny_overrides("image", "data2vec") + [*ENDLESS, f"train.out_dir={out}", *extra])


def signal_during_step(monkeypatch, signum: int, at_step: int) -> None:
    real_step = SingleProcessEngine.step

    def step(self, step):
        if step == at_step:
            os.kill(os.getpid(), signum)  # arrives in the middle of the optimizer step
        return real_step(self, step)

    monkeypatch.setattr(SingleProcessEngine, "step", step)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_step_checkpoints_it_and_the_run_resumes(tmp_path, monkeypatch, signum):
    before = signal.getsignal(signum)
    signal_during_step(monkeypatch, signum, at_step=1)
    cfg = tiny(tmp_path)
    with pytest.raises(TrainingInterrupted, match=rf"stopped by {signum.name} after step 2; checkpoint: .*"
                                                  r"model.safetensors \(step 2\); run the same command") as info:
        pretrain(cfg, progress=False)
    assert info.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is before  # the run's handlers are gone
    assert load_checkpoint(cfg.run_dir / "model.safetensors")["step"] == 2
    assert [r["step"] for r in read_metrics(cfg.run_dir)] == [1, 2]
    monkeypatch.undo()
    resumed = pretrain(tiny(tmp_path, "train.stop_after=1"), progress=False)
    assert resumed.start_step == 2 and [r["step"] for r in read_metrics(cfg.run_dir)] == [1, 2, 3]


def test_a_second_sigint_aborts_at_once_without_a_checkpoint(tmp_path, monkeypatch):
    signal_during_step(monkeypatch, signal.SIGINT, at_step=1)
    real_save = run_mod.save_checkpoint

    def interrupted_again(path, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, while the checkpoint is being written
        real_save(path, **kw)

    monkeypatch.setattr(run_mod, "save_checkpoint", interrupted_again)
    cfg = tiny(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, progress=False)
    assert not (cfg.run_dir / "model.safetensors").exists()
    assert not list(cfg.run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_command_exits_with_128_plus_the_signal_and_one_line(tmp_path, signum):
    """Sent to the whole process group (as Ctrl-C and scancel do), data workers included."""
    args = tiny_overrides("image", "data2vec") + ENDLESS + [f"train.out_dir={tmp_path}", "train.num_workers=1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "unimim.app.cli", "pretrain", str(RECIPE), *args, "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    metrics = tmp_path / "d2v_fmnist" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.read_text().strip()):  # training is under way
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"stopped by {signum.name} after step" in err and "run the same command to continue" in err
    step = load_checkpoint(tmp_path / "d2v_fmnist" / "model.safetensors")["step"]
    assert [r["step"] for r in read_metrics(tmp_path / "d2v_fmnist")] == list(range(1, step + 1))
