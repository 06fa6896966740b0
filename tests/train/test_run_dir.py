"""The run directory across kills, restarts and moves: each step logged once after a resume, partial checkpoint files
removed, train.resume=false setting the earlier run aside, one run at a time, a moved directory resuming, a changed
train.steps refused, and one-line errors for a full disk or unwritable output with the previous checkpoint kept."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.config import ConfigError
from unimim.train import checkpoint
from unimim.train.checkpoint import load_checkpoint
from unimim.train.loop import NonFiniteLossError
from unimim.train.metrics import MetricsWriter, read_metrics
from unimim.train.run_dir import RunLockedError, locked

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"


def tiny(out: Path, *extra: str):
    return load_recipe(RECIPE, tiny_overrides("image", "data2vec") + ["train.precision=fp32", f"train.out_dir={out}",
                                                                      *extra])


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir)]


def test_resume_after_a_kill_logs_each_step_once_and_removes_partial_files(tmp_path, monkeypatch):
    real_write = MetricsWriter.write

    def write_then_die(self, step, values):
        real_write(self, step, values)
        if step == 5:
            raise KeyboardInterrupt  # killed after logging steps 4 and 5, before the step-6 checkpoint

    monkeypatch.setattr(MetricsWriter, "write", write_then_die)
    cfg = tiny(tmp_path, "train.steps=6", "train.checkpoint_every=3")
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, progress=False)
    monkeypatch.undo()
    assert steps(cfg.run_dir) == [1, 2, 3, 4, 5]
    partial = cfg.run_dir / ".model.safetensors.k1ll3d.tmp"  # what a kill during a checkpoint write leaves
    partial.write_bytes(b"half a checkpoint")
    with (cfg.run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # and a torn last line
    resumed = pretrain(tiny(tmp_path, "train.steps=6", "train.checkpoint_every=3"), progress=False)
    assert resumed.start_step == 3
    assert steps(cfg.run_dir) == [1, 2, 3, 4, 5, 6]
    assert not partial.exists()


def test_resume_false_sets_the_earlier_run_aside_and_starts_clean(tmp_path):
    first = pretrain(tiny(tmp_path, "train.steps=2"), progress=False)
    old_losses = [r["loss"] for r in read_metrics(first.run_dir)]
    again = pretrain(tiny(tmp_path, "train.steps=2", "train.resume=false"), progress=False)
    assert again.start_step == 0 and steps(again.run_dir) == [1, 2]  # not a second trajectory appended
    (aside,) = again.run_dir.glob("replaced-*")
    assert [r["loss"] for r in read_metrics(aside)] == old_losses
    assert load_checkpoint(aside / "model.safetensors")["step"] == 2
    assert load_checkpoint(again.run_dir / "model.safetensors")["step"] == 2


def test_a_second_concurrent_run_in_the_same_directory_is_refused(tmp_path):
    cfg = tiny(tmp_path, "train.steps=1")
    cfg.run_dir.mkdir(parents=True)
    with locked(cfg.run_dir), pytest.raises(RunLockedError, match=rf"run directory {cfg.run_dir} is in use by "
                                                                  r"another run \(pid \d+, lock file"):
        pretrain(cfg, progress=False)
    assert not (cfg.run_dir / "metrics.jsonl").exists()
    assert len(pretrain(cfg, progress=False).losses) == 1  # the lock is released with its holder


def test_a_moved_run_directory_resumes(tmp_path):
    straight = pretrain(tiny(tmp_path / "straight", "train.steps=4"), progress=False)
    pretrain(tiny(tmp_path / "a", "train.steps=4", "train.stop_after=2"), progress=False)
    shutil.move(tmp_path / "a", tmp_path / "b")
    resumed = pretrain(tiny(tmp_path / "b", "train.steps=4"), progress=False)
    assert resumed.start_step == 2
    assert read_metrics(resumed.run_dir)[-1]["loss"] == read_metrics(straight.run_dir)[-1]["loss"]


def test_changing_train_steps_on_resume_is_refused(tmp_path):
    """The cosine schedule spans train.steps: resuming with another length would jump the lr (2e-5 -> 7.8e-4 seen)."""
    pretrain(tiny(tmp_path, "train.steps=4", "train.stop_after=2"), progress=False)
    with pytest.raises(ConfigError, match=r"train.steps: 4 -> 8\).*keep it, and end a job early with train.stop_"):
        pretrain(tiny(tmp_path, "train.steps=8"), progress=False)
    assert pretrain(tiny(tmp_path, "train.steps=4", "train.stop_after=1"), progress=False).start_step == 2


def test_non_finite_loss_after_a_resume_names_the_checkpoint_resumed_from(tmp_path, monkeypatch):
    import unimim.objectives.data2vec as d2v

    pretrain(tiny(tmp_path, "train.steps=4", "train.stop_after=2"), progress=False)
    real = d2v.regression_loss
    monkeypatch.setattr(d2v, "regression_loss", lambda *a, **kw: real(*a, **kw) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"at step 2; last good checkpoint: .*model.safetensors \(step 2\)$"):
        pretrain(tiny(tmp_path, "train.steps=4"), progress=False)


@pytest.mark.parametrize("err, name", [(errno.ENOSPC, "ENOSPC (No space left on device)"),
                                       (errno.EACCES, "EACCES (Permission denied)")])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, caplog,
                                                                                 err, name):
    from unimim.app.cli import main

    real_save, calls = checkpoint.torch.save, {"n": 0}

    def fail_second(obj, f):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(err, {errno.ENOSPC: "No space left on device", errno.EACCES: "Permission denied"}[err])
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", fail_second)
    args = tiny_overrides("image", "data2vec") + [f"train.out_dir={tmp_path}", "train.checkpoint_every=1"]
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", str(RECIPE), *args, "--no-progress"]) == 1
    run_dir = tmp_path / "d2v_fmnist"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert f"cannot write the checkpoint of step 2 to {run_dir / 'model.safetensors'}: {name}" in errors[0]
    assert "the checkpoint of step 1 is kept" in errors[0]
    monkeypatch.undo()
    assert load_checkpoint(run_dir / "model.safetensors")["step"] == 1
    assert not list(run_dir.glob(".*.tmp"))


def test_an_output_directory_that_is_a_file_is_one_line(tmp_path, caplog):
    from unimim.app.cli import main

    out = tmp_path / "runs"
    out.write_text("not a directory")
    args = tiny_overrides("image", "data2vec") + [f"train.out_dir={out}"]
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", str(RECIPE), *args, "--no-progress"]) == 2
    assert f"train.out_dir='{out}': {out} is a file, not a directory" in caplog.text
    assert out.read_text() == "not a directory"
