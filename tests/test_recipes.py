"""The shipped recipes by name (``unimim.app.recipes``), ``unimim recipes`` and ``unimim --version``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import unimim
from unimim.app.cli import main
from unimim.app.experiment import load_recipe
from unimim.app.recipes import find_recipe, list_recipes, recipe_names, recipes_root, resolve_recipe
from unimim.config import ConfigError, to_dict

ROOT = Path(__file__).resolve().parents[1]
ON_DISK = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix()
                 for p in (ROOT / "recipes").rglob("*.yaml"))


def test_names_are_the_paths_under_recipes():
    assert recipes_root() == ROOT / "recipes"  # a source checkout / editable install reads them in place
    assert recipe_names(partial=True) == ON_DISK
    assert recipe_names() == [n for n in ON_DISK if "/_" not in f"/{n}"]
    assert "image/mae_fmnist_cpu" in recipe_names() and "image/_base/fmnist_cpu" not in recipe_names()


def test_a_name_resolves_to_its_file_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ROOT / "recipes/image/mae_fmnist_cpu.yaml"
    assert find_recipe("image/mae_fmnist_cpu") == path
    assert find_recipe("image/mae_fmnist_cpu.yaml") == path
    assert resolve_recipe("image/mae_fmnist_cpu") == path
    assert to_dict(load_recipe("image/mae_fmnist_cpu")) == to_dict(load_recipe(path))


def test_a_path_still_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "image/mae_fmnist_cpu.yaml"  # a user's file of the same name as a shipped recipe
    local.parent.mkdir()
    local.write_text("name: mine\nmodality: image\nobjective: simmim\n")
    assert resolve_recipe("image/mae_fmnist_cpu.yaml") == Path("image/mae_fmnist_cpu.yaml")
    assert load_recipe("image/mae_fmnist_cpu.yaml").name == "mine"
    assert load_recipe("image/mae_fmnist_cpu").name == "mae_fmnist"  # no suffix, no such file here: the name


def test_unknown_names_list_close_matches():
    with pytest.raises(ConfigError, match=r"recipe not found: image/mae_fmnst \(.*close matches: image/mae_fmnist_cpu"):
        find_recipe("image/mae_fmnst")
    with pytest.raises(ConfigError, match=r"close matches: .*speech/data2vec_tuxpaint_cpu"):
        find_recipe("data2vec_tuxpaint_cpu")  # the modality left out: same-stem names are offered
    with pytest.raises(ConfigError, match="recipe not found: ../pyproject"):
        find_recipe("../pyproject")  # names stay inside the recipes directory
    with pytest.raises(ConfigError, match="recipe not found: /nope.yaml"):
        load_recipe("/nope.yaml")


def test_listing_matches_the_loaded_configs():
    infos = {i.name: i for i in list_recipes()}
    assert sorted(infos) == recipe_names()
    for name, info in infos.items():
        if name.split("/")[1].startswith("finetune_"):  # applied over a run: shown as a fine-tune of its modality
            assert (info.modality, info.objective) == (name.split("/")[0], "finetune"), name
            continue
        if name.startswith("bench/"):  # a benchmark suite (unimim bench)
            assert (info.modality, info.objective) == ("-", "suite"), name
            continue
        cfg = load_recipe(name)
        assert (info.modality, info.objective) == (cfg.modality, cfg.objective), name
    finetunes = {(i.modality, i.objective) for n, i in infos.items() if "/finetune_" in n}
    assert finetunes == {("image", "finetune"), ("speech", "finetune"), ("text", "finetune")}
    # the first sentence of the leading comment, on one line
    assert infos["image/dvae_fmnist_cpu"].description == (
        "BEiT stage 1 on Fashion-MNIST, CPU-scale: train the dVAE visual tokenizer (~3 min on 2 cores).")
    assert infos["image/beit_vitb16_in1k"].description.startswith("BEiT ViT-B/16 on ImageNet-1K (Bao et al. 2021")
    assert all(len(i.description) <= 100 and "\n" not in i.description for i in infos.values())


def test_recipes_command(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "modality", "objective", "description"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows["image/mae_fmnist_cpu"] == ["image", "mae"]
    assert rows["text/data2vec2_text_cpu"] == ["text", "data2vec2"]
    assert rows["speech/finetune_keywords_cpu"] == ["speech", "finetune"]
    assert rows["text/finetune_glue_sst2"] == ["text", "finetune"]
    assert sorted(rows) == recipe_names()


def test_unknown_recipe_on_the_command_line_is_exit_2(caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", "image/mae_fmnst"]) == 2
    assert "close matches: image/mae_fmnist_cpu" in caplog.text


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"unimim {unimim.__version__}"
