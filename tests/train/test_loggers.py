"""Metric sinks beside JSONL (``train.loggers``): TensorBoard by default when installed, W&B when asked for.

W&B is tested with a fake ``wandb`` module in ``sys.modules`` that records what it is given (no service, no network);
a module set to ``None`` in ``sys.modules`` stands for one that is not installed.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_overrides
from unimim.app.cli import main
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.config import ConfigError
from unimim.train.checkpoint import has_checkpoint
from unimim.train.metrics import WANDB_ID_NAME, MetricsWriter, read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"


class FakeRun:
    def __init__(self, **kwargs) -> None:
        self.init = kwargs
        self.logged: list[tuple[int, dict]] = []
        self.finished = 0

    def log(self, data: dict, step: int | None = None) -> None:
        self.logged.append((step, dict(data)))

    def finish(self) -> None:
        self.finished += 1


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.runs = []

    def init(**kwargs):
        run = FakeRun(**kwargs)
        module.runs.append(run)
        return run

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _events(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "tb").glob("events.out.tfevents.*")) if (run_dir / "tb").is_dir() else []


def test_default_is_jsonl_plus_tensorboard_when_installed(tmp_path):
    pytest.importorskip("tensorboard")  # the test extra installs it (make install)
    w = MetricsWriter(tmp_path)
    w.write(1, {"loss": 0.5})
    w.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]
    assert len(_events(tmp_path)) == 1


def test_default_without_tensorboard_is_jsonl_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed
    w = MetricsWriter(tmp_path)
    w.write(1, {"loss": 0.5})
    w.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}] and not (tmp_path / "tb").exists()


def test_an_explicit_list_is_exactly_those_loggers(tmp_path, fake_wandb):
    w = MetricsWriter(tmp_path, loggers=["jsonl"])  # jsonl alone: no TensorBoard even where it is installed
    w.write(1, {"loss": 0.5})
    w.close()
    assert not (tmp_path / "tb").exists() and fake_wandb.runs == []
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]
    w = MetricsWriter(tmp_path / "w", loggers=["wandb"])  # JSONL is always written
    w.write(1, {"loss": 0.5})
    w.close()
    assert read_metrics(tmp_path / "w") == [{"step": 1, "loss": 0.5}] and not (tmp_path / "w/tb").exists()


@pytest.mark.parametrize("name", ["wandb", "tensorboard"])
def test_asked_for_and_not_installed_is_a_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=rf"train.loggers asks for {name}, which is not installed: "
                                          rf"pip install 'unimim\[{name}\]'"):
        MetricsWriter(tmp_path, loggers=["jsonl", name])
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before anything is written


def test_an_unknown_logger_is_refused_when_the_recipe_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"train.loggers\[0\]: 'mlflow' is not one of \['jsonl', 'tensorboard'"):
        load_recipe(RECIPE, ["train.loggers=[mlflow]"])


def test_wandb_gets_the_scalars_at_their_steps_and_finishes_on_close(tmp_path, fake_wandb):
    config = {"name": "r", "train": {"steps": 2}}
    w = MetricsWriter(tmp_path, loggers=["jsonl", "wandb"], run_name="r", config=config, wandb_project="proj")
    w.write(10, {"loss": 1.5, "lr": 1e-3, "note": "text is JSONL only", "skipped_inputs": 0})
    w.write(20, {"loss": 1.25, "lr": 2e-3, "note": "x", "skipped_inputs": 1})
    (run,) = fake_wandb.runs
    assert run.finished == 0
    w.close()
    assert run.finished == 1
    run_id = (tmp_path / WANDB_ID_NAME).read_text().strip()
    assert len(run_id) == 16 and int(run_id, 16) >= 0
    assert run.init == {"project": "proj", "name": "r", "id": run_id, "resume": "allow", "dir": str(tmp_path),
                        "config": config}
    assert run.logged == [(10, {"loss": 1.5, "lr": 1e-3, "skipped_inputs": 0}),
                          (20, {"loss": 1.25, "lr": 2e-3, "skipped_inputs": 1})]
    assert [r["note"] for r in read_metrics(tmp_path)] == ["text is JSONL only", "x"]
    w.close()  # a second close does not finish twice
    assert run.finished == 1


def test_a_resumed_run_continues_its_wandb_run_and_a_fresh_one_starts_another(tmp_path, fake_wandb):
    first = MetricsWriter(tmp_path, loggers=["wandb"])
    first.close()
    resumed = MetricsWriter(tmp_path, start_step=5, loggers=["wandb"])
    resumed.close()
    again = MetricsWriter(tmp_path, start_step=0, loggers=["wandb"])  # from step 0: a run of its own
    again.close()
    ids = [r.init["id"] for r in fake_wandb.runs]
    assert ids[0] == ids[1] != ids[2]
    assert (tmp_path / WANDB_ID_NAME).read_text().strip() == ids[2]


def test_a_training_run_logs_every_metric_line_to_wandb(tmp_path, fake_wandb):
    overrides = [*tiny_overrides("image", "data2vec", tmp_path), f"train.out_dir={tmp_path}", "name=wb",
                 "train.loggers=[jsonl, wandb]", "train.wandb_project=p"]
    result = pretrain(load_recipe(RECIPE, overrides), progress=False)
    (run,) = fake_wandb.runs
    assert run.finished == 1
    rows = read_metrics(result.run_dir)
    assert [step for step, _ in run.logged] == [r["step"] for r in rows] == [1, 2, 3]
    for (_, logged), row in zip(run.logged, rows):
        assert logged == {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
    assert run.init["name"] == "wb" and run.init["project"] == "p"
    assert run.init["config"] == yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert not (result.run_dir / "tb").exists()


def test_pretrain_asking_for_a_missing_wandb_is_exit_2(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)
    args = tiny_overrides("image", "data2vec", tmp_path) + [f"train.out_dir={tmp_path}", "name=nowb",
                                                            "train.loggers=[wandb]"]
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", str(RECIPE), *args, "--no-progress"]) == 2
    assert "pip install 'unimim[wandb]'" in caplog.text
    assert not has_checkpoint(tmp_path / "nowb") and not (tmp_path / "nowb" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_real_wandb_offline_writes_the_run_locally(tmp_path, monkeypatch):
    """The real client in offline mode (WANDB_MODE=offline): no network, the run's files under run_dir/wandb/."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install 'unimim[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    w = MetricsWriter(tmp_path, loggers=["wandb"], run_name="offline", config={"a": 1})
    for step in (1, 2, 3):
        w.write(step, {"loss": 1.0 / step})
    w.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith((tmp_path / WANDB_ID_NAME).read_text().strip())
    assert any(runs[0].glob("*.wandb"))
