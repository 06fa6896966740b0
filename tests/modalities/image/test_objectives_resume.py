"""dVAE, BEiT and iBOT runs resume bit-identically (schedules, EMA teacher, centres and step counters restored)."""

from __future__ import annotations

from pathlib import Path

import pytest

import unimim.train.run as run_mod
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[3]


def _cfg(name: str, out: Path):
    recipe = ROOT / f"recipes/image/{name}"
    cfg = load_recipe(recipe)
    return load_recipe(recipe, tiny_overrides(cfg.modality, cfg.objective, out) + [
        f"train.out_dir={out}", "train.steps=4", "train.precision=fp32", "encoder.drop_path=0.0"])


@pytest.mark.parametrize("recipe", ["dvae_fmnist_cpu.yaml", "beit_fmnist_cpu.yaml", "ibot_fmnist_cpu.yaml"])
def test_resume_continues_the_same_trajectory(recipe, tmp_path, monkeypatch):
    straight = pretrain(_cfg(recipe, tmp_path / "a"), progress=False)
    real_save = run_mod.save_checkpoint

    def save_then_die(path, **kw):
        real_save(path, **kw)
        if kw["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_cfg(recipe, tmp_path / "b"), progress=False)
    monkeypatch.undo()
    resumed = pretrain(_cfg(recipe, tmp_path / "b"), progress=False)
    assert resumed.start_step == 2
    a, b = read_metrics(straight.run_dir), read_metrics(resumed.run_dir)
    keys = [k for k in a[0] if k not in ("samples_per_s", "elapsed_s")]  # timings differ
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
