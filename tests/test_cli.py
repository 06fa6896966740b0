import logging
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from unimim.app.cli import main

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes/image/data2vec_fmnist_cpu.yaml")


def test_bad_key_is_a_clear_error(caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", RECIPE, "train.stpes=3"]) == 2
    assert "unknown config key 'train.stpes'. Did you mean 'train.steps'?" in caplog.text


def test_missing_data_path_is_named(caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        code = main(["pretrain", RECIPE, "data.source=folder", "data.root=/no/such/images",
                     f"train.out_dir={tmp_path}"])
    assert code == 2
    assert "/no/such/images" in caplog.text


def test_missing_fashion_mnist_names_file_and_package(caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        code = main(["pretrain", RECIPE, f"data.root={tmp_path}/fmnist", f"train.out_dir={tmp_path}"])
    assert code == 2
    assert f"{tmp_path}/fmnist" in caplog.text and "dataset-fashion-mnist" in caplog.text


def test_settings_that_do_not_fit_together_are_a_clear_error(caplog, tmp_path):
    # each value is valid alone; the objective's spec refuses the pair when the config loads (a config error, exit
    # code 2, no traceback), before any data or model is built
    with caplog.at_level(logging.ERROR):
        code = main(["pretrain", RECIPE, "encoder.depth=2", "method.top_k=4", f"train.out_dir={tmp_path}"])
    assert code == 2
    assert "top_k=4 exceeds encoder.depth=2" in caplog.text


def test_pretrain_then_probe(tmp_path, capsys):
    args = tiny_overrides("image", "data2vec", tmp_path) + [f"train.out_dir={tmp_path}", "name=cli", "probe.epochs=3",
                                                            "probe.knn_k=3"]
    assert main(["pretrain", RECIPE, *args, "--no-progress"]) == 0
    assert main(["probe", str(tmp_path / "cli"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pretrained" in out and "random" in out
    assert (tmp_path / "cli" / "probe.json").is_file()


def test_config_prints_resolved(capsys):
    assert main(["config", RECIPE, "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["mae_fmnist_cpu.yaml", "simmim_fmnist_cpu.yaml", "ibot_fmnist_cpu.yaml",
                                    "dvae_fmnist_cpu.yaml"])
def test_every_image_objective_can_be_probed(tmp_path, recipe, caplog):
    objective = recipe.split("_")[0]
    path = str(Path(RECIPE).parent / recipe)
    args = tiny_overrides("image", objective, tmp_path) + [f"train.out_dir={tmp_path}", "name=run", "probe.epochs=2",
                                                           "probe.knn_k=3"]
    assert main(["pretrain", path, *args, "--no-progress"]) == 0
    assert main(["probe", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "probe.json").is_file()
    if objective == "dvae":  # the tokenizer's features do not come from transformer blocks: refused clearly
        with caplog.at_level(logging.ERROR):
            assert main(["probe", str(tmp_path / "run"), "probe.layers=[-1]", "--no-progress"]) == 2
        assert "probe.layers is not supported" in caplog.text
    else:  # encode(layers=...) is every other objective's contract (iBOT: the teacher's blocks)
        assert main(["probe", str(tmp_path / "run"), "probe.layers=[-1]", "--no-progress"]) == 0


def test_a_recipe_with_a_yaml_error_is_one_line(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\n  steps: 4\n")
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", str(bad)]) == 2
    assert caplog.records[-1].getMessage() == f"recipe {bad}: duplicate key 'steps' (line 3, column 3)"
