"""Slow end-to-end quality check (run with `pytest -m slow`): a short data2vec 2.0 run on real Fashion-MNIST must
give an encoder whose linear probe clearly beats the same encoder with random weights."""

from pathlib import Path

import pytest

from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.app.probe import probe_run

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_file(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_short_pretraining_beats_random_weights(tmp_path):
    recipe = Path(__file__).resolve().parents[1] / "recipes/image/data2vec2_fmnist_cpu.yaml"
    cfg = load_recipe(recipe, [f"train.out_dir={tmp_path}", "train.steps=150", "optim.warmup_steps=15",
                               "method.ema.anneal_steps=150", "data.limit=12000"])
    pretrain(cfg, progress=False)
    rows = {r["encoder"]: r for r in probe_run(cfg.run_dir, progress=False)["results"]}
    assert rows["pretrained"]["linear"] > rows["random"]["linear"] + 0.03
    assert rows["pretrained"]["knn"] > rows["random"]["knn"] + 0.05
