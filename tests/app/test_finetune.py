"""``unimim finetune`` end to end on a tiny pretrained run (both inits, predictions, the paired interval, resume,
strict config), the image task's folders (a missing split is a clear error; probes on a user's folder), and what
fine-tuning trains (the weights ``encode`` runs, nothing else)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_overrides
from unimim.app.cli import main
from unimim.app.experiment import load_recipe
from unimim.app.finetune import build_finetune_model, load_finetune_config
from unimim.app.registry import MODALITIES, build_objective
from unimim.train.checkpoint import CHECKPOINT_NAME, has_checkpoint
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes/image/data2vec_fmnist_cpu.yaml")


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft")
    args = tiny_overrides("image", "data2vec", out) + [f"train.out_dir={out}", "name=run"]
    assert main(["pretrain", RECIPE, *args, "--no-progress"]) == 0
    return out / "run"


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _folder(root: Path, splits: tuple[str, ...], classes: tuple[str, ...] = ("cat", "dog"), n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 60, (20, 20), dtype=np.uint8) + np.uint8(190 * k // max(1, len(classes) - 1))
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_finetune_writes_both_inits_and_resumes_after_an_interruption(pretrained_run, tmp_path, caplog):
    a, b = _copy(pretrained_run, tmp_path / "a"), _copy(pretrained_run, tmp_path / "b")
    assert main(["finetune", str(a), "train.precision=fp32", "--no-progress"]) == 0
    task_dir = a / "finetune" / "synthetic"
    out = json.loads((task_dir / "finetune.json").read_text())
    assert set(out["results"]) == {"pretrained", "random"}
    for r in out["results"].values():
        assert 0 <= r["top1"] <= r["top5"] <= 1 and r["train_seconds"] > 0 and r["steps"] == 4
    d = out["difference"]
    assert d["metric"] == "top1" and d["low"] <= d["diff"] <= d["high"] and d["num_examples"] == 32
    preds = out["predictions"]
    assert len(preds["labels"]) == len(preds["pretrained"]) == len(preds["random"]) == 32
    top1 = np.mean(np.array(preds["pretrained"]) == np.array(preds["labels"]))
    assert top1 == pytest.approx(out["results"]["pretrained"]["top1"])
    assert d["diff"] == pytest.approx(out["results"]["pretrained"]["top1"] - out["results"]["random"]["top1"])
    assert out["config"]["finetune"]["steps"] == 4 and out["config"]["train"]["batch_size"] == 16
    for init in ("pretrained", "random"):
        assert has_checkpoint(task_dir / init) and (task_dir / init / CHECKPOINT_NAME).is_file()
        assert [row["step"] for row in read_metrics(task_dir / init)] == [1, 2, 3, 4]

    # interrupted after 2 of 4 steps (a job slice), then the same command: the same fine-tune as without the stop
    assert main(["finetune", str(b), "train.precision=fp32", "train.stop_after=2", "--no-progress"]) == 0
    assert not (b / "finetune" / "synthetic" / "finetune.json").exists()
    assert main(["finetune", str(b), "train.precision=fp32", "--no-progress"]) == 0
    resumed = json.loads((b / "finetune" / "synthetic" / "finetune.json").read_text())
    assert resumed["predictions"] == out["predictions"]
    for init in ("pretrained", "random"):
        losses = [r["loss"] for r in read_metrics(b / "finetune" / "synthetic" / init)]
        assert losses == pytest.approx([r["loss"] for r in read_metrics(task_dir / init)], rel=1e-5)

    # a finished init is not re-run
    with caplog.at_level(logging.INFO):
        assert main(["finetune", str(a), "train.precision=fp32", "--no-progress"]) == 0
    assert caplog.text.count("already fine-tuned") == 2
    # ... unless its settings changed: refused like a resume with another config
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["finetune", str(a), "train.precision=fp32", "finetune.seed=1", "--no-progress"]) == 2
    assert "finetune.seed: 0 -> 1" in caplog.text


def test_finetune_refuses_bad_keys_and_architecture_changes(pretrained_run, tmp_path, caplog):
    run = str(pretrained_run)
    with caplog.at_level(logging.ERROR):
        assert main(["finetune", run, "finetune.lr=1e-3"]) == 2
    assert "unknown config key 'finetune.lr'" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert main(["finetune", run, "encoder.depth=3"]) == 2
    assert "a fine-tune changes only" in caplog.text and "encoder.depth: 2 -> 3" in caplog.text
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("method:\n  top_k: 1\n")
    with caplog.at_level(logging.ERROR):
        assert main(["finetune", run, str(recipe)]) == 2
    assert "sections ['method'] cannot change a pretrained run" in caplog.text


def test_the_cpu_recipe_applies_over_the_run(pretrained_run):
    cfg = load_finetune_config(pretrained_run, ROOT / "recipes/image/finetune_fmnist_cpu.yaml")
    assert cfg.finetune.layer_decay == 0.75 and cfg.finetune.batch_size == 128 and cfg.task.limit_train == 8000
    assert cfg.encoder.depth == 2  # the run's architecture, whatever the recipe


def test_a_pretraining_job_slice_does_not_carry_into_the_fine_tune(pretrained_run, tmp_path):
    """``train.stop_after`` / ``train.resume=false`` of the pretraining command line are that invocation's: a
    fine-tune of a run that was pretrained in slices runs to its end (and resumes), unless its own command sets them."""
    run = _copy(pretrained_run, tmp_path / "sliced")
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("stop_after: null", "stop_after: 1").replace("resume: true",
                                                                                            "resume: false"))
    assert "stop_after: 1" in config.read_text() and "resume: false" in config.read_text()
    cfg = load_finetune_config(run)
    assert cfg.train.stop_after is None and cfg.train.resume is True
    assert load_finetune_config(run, overrides=["train.stop_after=3"]).train.stop_after == 3


def test_probe_on_a_users_folder(pretrained_run, tmp_path):
    root = _folder(tmp_path / "pets", ("train", "val"))
    run = _copy(pretrained_run, tmp_path / "run")
    assert main(["probe", str(run), "task.source=folder", f"task.root={root}", "probe.epochs=2", "probe.knn_k=3",
                 "--no-progress"]) == 0
    result = json.loads((run / "probe.json").read_text())
    assert result["num_train"] == 12 and result["num_test"] == 12


def test_a_missing_split_is_a_clear_error_listing_the_folders(pretrained_run, tmp_path, caplog):
    root = _folder(tmp_path / "pets", ("train", "extra"))
    with caplog.at_level(logging.ERROR):
        assert main(["probe", str(pretrained_run), "task.source=folder", f"task.root={root}", "--no-progress"]) == 2
    assert "has no split folder 'val' (folders found: extra, train)" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert main(["finetune", str(pretrained_run), "task.source=folder", f"task.root={root}",
                     "task.test_split=test", "--no-progress"]) == 2
    assert "has no split folder 'test' (folders found: extra, train)" in caplog.text


def test_a_test_split_without_some_class_keeps_the_training_indices(tmp_path):
    root = _folder(tmp_path / "pets", ("train",), classes=("ant", "bee", "cat"))
    _folder(tmp_path / "pets", ("val",), classes=("cat",))
    cfg = load_recipe(RECIPE, tiny_overrides("image", "data2vec") + ["task.source=folder", f"task.root={root}"])
    task = MODALITIES["image"].build_task(cfg.task, cfg, False)
    assert task.classes == ["ant", "bee", "cat"] and {task.test[i][1] for i in range(len(task.test))} == {2}


@pytest.mark.parametrize("objective", ["data2vec2", "mae", "ibot"])
def test_only_the_weights_encode_runs_are_trained(objective, tmp_path):
    """iBOT encodes with its EMA teacher: that copy is trained (and the student is not); MAE's decoder is not part
    of the fine-tuned model."""
    recipe = ROOT / f"recipes/image/{objective}_fmnist_cpu.yaml"
    cfg = load_recipe(recipe, tiny_overrides("image", objective, tmp_path))
    obj = build_objective(cfg)
    task = MODALITIES["image"].build_task(cfg.task, cfg, True)
    model = build_finetune_model(obj, task, cfg.finetune).train()
    batch = task.collate([task.train[i] for i in range(4)])
    model(batch).loss.backward()
    trained = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    backbone = {id(p) for p in model.backbone.parameters()}
    assert trained and trained <= backbone | {id(p) for p in (*model.head.parameters(), *model.fc_norm.parameters())}
    assert len(trained & backbone) > 0.5 * len(backbone)
    assert all(k.startswith(("backbone.", "fc_norm.", "head.")) for k in model.state_dict())
    if objective == "ibot":
        assert model.backbone is obj.teacher.module["backbone"]
        assert all(p.grad is None for p in obj.backbone.parameters())  # the student is not what encode runs
    if objective == "mae":
        assert not any("decoder" in k for k in model.state_dict())
        assert all(p.grad is None for p in obj.decoder.parameters())
    assert isinstance(model(batch).loss, torch.Tensor)


def test_evaluation_settings_never_block_resuming_pretraining_but_fix_a_fine_tune():
    from unimim.app.finetune import FINETUNE_RESUMABLE
    from unimim.config import ConfigError
    from unimim.train.run import check_resumable

    saved = {"train": {"steps": 3}, "probe": {"epochs": 2}}  # a run saved before the finetune / task sections
    check_resumable(saved, {**saved, "finetune": {"epochs": 3.0}, "task": {"source": "folder"}})
    with pytest.raises(ConfigError, match="finetune.seed: 0 -> 1"):
        check_resumable({"finetune": {"seed": 0}}, {"finetune": {"seed": 1}}, FINETUNE_RESUMABLE)
    check_resumable({"finetune": {"baseline": True}, "train": {"device": "cpu"}},
                    {"finetune": {"baseline": False}, "train": {"device": "cuda"}}, FINETUNE_RESUMABLE)
