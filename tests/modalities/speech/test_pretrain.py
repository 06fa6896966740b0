"""The speech recipes end to end on tiny generated audio: pretrain (data2vec 1.0 and 2.0), resume, probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from unimim.app.cli import main
from unimim.app.experiment import load_recipe

RECIPES = Path(__file__).resolve().parents[3] / "recipes/speech"


def _data(tiny_speech) -> list[str]:
    return [f"data.manifest={tiny_speech['pretrain']}", f"data.eval_train_manifest={tiny_speech['train']}",
            f"data.eval_test_manifest={tiny_speech['test']}"]


@pytest.mark.parametrize("recipe,extra", [
    ("data2vec_tuxpaint_cpu.yaml", ["data.batch_mode=pad"]),
    ("data2vec2_tuxpaint_cpu.yaml", ["masking.num_masks=2", "method.decoder.dim=16", "method.decoder.groups=4"]),
])
def test_pretrain_then_probe(tmp_path, tiny_speech, capsys, recipe, extra):
    objective = recipe.split("_")[0]
    args = tiny_overrides("speech", objective) + _data(tiny_speech) + extra + [
        f"train.out_dir={tmp_path}", "name=run", "probe.epochs=3", "probe.knn_k=3"]
    assert main(["pretrain", str(RECIPES / recipe), *args, "--no-progress"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(x["skipped_inputs"] == 0 for x in lines) and lines[-1]["mask_ratio"] > 0
    assert main(["probe", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pretrained" in out and "random" in out
    probe = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert probe["num_train"] == 24 and probe["num_test"] == 9


def test_missing_data_names_path_and_make_target(tmp_path, caplog):
    code = main(["pretrain", str(RECIPES / "data2vec_tuxpaint_cpu.yaml"), *tiny_overrides("speech", "data2vec"),
                 f"data.manifest={tmp_path}/none.tsv", f"train.out_dir={tmp_path}"])
    assert code == 2
    assert f"{tmp_path}/none.tsv" in caplog.text and "make data-speech" in caplog.text


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml") if not p.name.startswith("finetune_")))
def test_recipes_load(recipe):
    cfg = load_recipe(RECIPES / recipe)
    assert cfg.modality == "speech" and cfg.method.target_source == "ffn" and cfg.method.layer_norm == "instance"
    assert not cfg.encoder.norm_first and cfg.method.loss_beta == 0.0
