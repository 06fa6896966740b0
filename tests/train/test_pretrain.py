"""End-to-end runs at tiny size: every recipe for 3 steps, resume equivalence, failure handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import unimim.train.run as run_mod
from tests.conftest import objective_logs, tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.core.collapse import CollapseError
from unimim.train.checkpoint import load_checkpoint
from unimim.train.loop import NonFiniteLossError
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in ROOT.joinpath("recipes").rglob("*.yaml")  # the bases of recipes (image/_base/) are
                 if not any(part.startswith("_") for part in p.relative_to(ROOT).parts)  # run through them
                 and not p.name.startswith("finetune_")  # fine-tune recipes: tests/app/test_finetune_recipes.py
                 and p.parent.name != "bench")  # suites: tests/app/test_bench.py


def tiny(recipe: Path, tmp_path: Path, *extra: str):
    cfg = load_recipe(recipe)
    overrides = tiny_overrides(cfg.modality, cfg.objective, tmp_path)
    return load_recipe(recipe, overrides + [f"train.out_dir={tmp_path}", *extra])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_smoke(recipe, tmp_path):
    cfg = tiny(recipe, tmp_path)
    result = pretrain(cfg, progress=False)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    rows = read_metrics(result.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "samples_per_s"} | objective_logs(cfg.objective) <= rows[0].keys()
    if cfg.optim.weight_decay_end is not None:  # a scheduled weight decay is logged (iBOT's 0.04 -> 0.4)
        assert rows[0]["weight_decay"] == pytest.approx(cfg.optim.weight_decay)
        assert rows[-1]["weight_decay"] > rows[0]["weight_decay"]
    assert (result.run_dir / "config.yaml").is_file()
    ckpt = load_checkpoint(result.run_dir / "model.safetensors")
    assert ckpt["step"] == 3 and ckpt["config"]["name"] == cfg.name


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir)]


def test_resume_continues_the_same_trajectory(tmp_path, monkeypatch):
    recipe = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
    common = ["train.steps=4", "train.precision=fp32"]
    straight = pretrain(tiny(recipe, tmp_path / "a", *common), progress=False)

    real_save = run_mod.save_checkpoint

    def save_then_die(path, **kw):
        real_save(path, **kw)
        if kw["step"] == 2:
            raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    monkeypatch.setattr(run_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(recipe, tmp_path / "b", *common), progress=False)
    monkeypatch.undo()
    resumed = pretrain(tiny(recipe, tmp_path / "b", *common), progress=False)
    assert resumed.start_step == 2 and len(resumed.losses) == 2

    assert _losses(straight.run_dir) == _losses(resumed.run_dir)  # bit-identical on CPU in fp32
    a = load_checkpoint(straight.run_dir / "model.safetensors")["model"]
    b = load_checkpoint(resumed.run_dir / "model.safetensors")["model"]
    for k in a:
        if k.endswith("_extra_state"):
            for tk, tv in a[k]["teacher"].items():
                assert torch.equal(tv, b[k]["teacher"][tk]), tk
        else:
            assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_changed_config(tmp_path):
    recipe = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
    pretrain(tiny(recipe, tmp_path, "train.steps=2"), progress=False)
    from unimim.config import ConfigError

    with pytest.raises(ConfigError, match="cannot resume.*optim.weight_decay"):
        pretrain(tiny(recipe, tmp_path, "train.steps=4", "optim.weight_decay=0.1"), progress=False)


def test_non_finite_loss_names_step_and_checkpoint(tmp_path, monkeypatch):
    import unimim.objectives.data2vec as d2v

    real = d2v.regression_loss
    calls = {"n": 0}

    def nan_on_second_step(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(d2v, "regression_loss", nan_on_second_step)
    cfg = tiny(ROOT / "recipes/image/data2vec_fmnist_cpu.yaml", tmp_path, "train.checkpoint_every=1")
    with pytest.raises(NonFiniteLossError, match=r"at step 1; last good checkpoint: .*model.safetensors"):
        pretrain(cfg, progress=False)
    assert load_checkpoint(cfg.run_dir / "model.safetensors")["step"] == 1


def test_collapse_floor_stops_the_run(tmp_path):
    cfg = tiny(ROOT / "recipes/image/data2vec_fmnist_cpu.yaml", tmp_path,
               "method.min_target_std=100.0", "method.collapse_after=0")
    with pytest.raises(CollapseError, match="representation collapse at step 0: target_std="):
        pretrain(cfg, progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from unimim.train import checkpoint

    checkpoint.atomic_save({"a": 1}, tmp_path / "c.pt")

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_save({"a": 2}, tmp_path / "c.pt")
    monkeypatch.undo()
    assert torch.load(tmp_path / "c.pt", weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_probe_on_a_tiny_run(tmp_path):
    from unimim.app.probe import probe_run

    cfg = tiny(ROOT / "recipes/image/data2vec_fmnist_cpu.yaml", tmp_path, "probe.epochs=5", "probe.knn_k=3")
    pretrain(cfg, progress=False)
    result = probe_run(cfg.run_dir, progress=False)
    saved = json.loads((cfg.run_dir / "probe.json").read_text())
    assert [r["encoder"] for r in saved["results"]] == ["random", "pretrained"]
    assert all(0.0 <= r["linear"] <= 1.0 and 0.0 <= r["knn"] <= 1.0 for r in saved["results"])
    assert "pretrained" in result["table"]


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    from PIL import Image

    root = tmp_path / "images" / "train" / "shapes"
    root.mkdir(parents=True)
    for i in range(10):
        Image.fromarray((torch.rand(16, 16) * 255).byte().numpy()).save(root / f"ok{i}.png")
    good = (root / "ok0.png").read_bytes()
    for i in range(3):
        (root / f"truncated{i}.png").write_bytes(good[: len(good) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "zz.jpg").write_bytes(b"\xff\xd8\xff")
    cfg = tiny(ROOT / "recipes/image/data2vec_fmnist_cpu.yaml", tmp_path, "data.source=folder",  # a flat folder:
               f"data.root={tmp_path / 'images'}", "data.split=null",  # data.split null
               "train.steps=2")  # 16 files, 2 batches of 8 = one epoch
    result = pretrain(cfg, progress=False)
    assert len(result.losses) == 2
    assert read_metrics(result.run_dir)[-1]["skipped_inputs"] == 6


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    """batch 8 x 1 and batch 4 x 2 see the same examples and masks (random masks: equal counts per image, so the
    mean over masked tokens equals the mean of the micro-batch means): same trajectory up to float rounding."""
    recipe = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
    common = ["train.precision=fp32", "encoder.drop_path=0.0", "train.steps=3", "masking.kind=random"]
    big = pretrain(tiny(recipe, tmp_path / "a", *common), progress=False)
    acc = pretrain(tiny(recipe, tmp_path / "b", *common, "train.batch_size=4", "train.accumulate=2"),
                   progress=False)
    assert big.losses == pytest.approx(acc.losses, rel=1e-4)
