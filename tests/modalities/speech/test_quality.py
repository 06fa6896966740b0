"""Slow end-to-end quality check on the real demo data (run with `pytest -m slow` after `make data-speech`): a short
data2vec run on the recorded tuxpaint speech must give an encoder whose keyword probe on held-out voices clearly
beats the same encoder with random weights."""

from pathlib import Path

import pytest

from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.app.probe import probe_run

ROOT = Path(__file__).resolve().parents[3]
NEEDED = [ROOT / "data/speech/tuxpaint.tsv", ROOT / "data/speech/keywords/train.wrd",
          ROOT / "data/speech/keywords/test.wrd"]


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in NEEDED), reason="needs the speech demo data (make data-speech)")
def test_short_speech_pretraining_beats_random_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe's data paths are relative to the repository root
    cfg = load_recipe(ROOT / "recipes/speech/data2vec_tuxpaint_cpu.yaml",
                      [f"train.out_dir={tmp_path}", "train.steps=400", "method.ema.anneal_steps=400"])
    pretrain(cfg, progress=False)
    rows = {r["encoder"]: r for r in probe_run(cfg.run_dir, progress=False)["results"]}
    assert rows["pretrained"]["linear"] > rows["random"]["linear"] + 0.05
