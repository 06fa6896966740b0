"""Recipe composition (``base:``): merge rules, chains, cycles, bases by name and by path, and the shipped recipes
that extend ``image/_base/fmnist_cpu.yaml`` resolving to exactly the configs of their flat originals
(``tests/recipes_flat/``, the recipes as they were before they were split)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from unimim.app.cli import main
from unimim.app.experiment import load_recipe
from unimim.app.recipes import find_recipe
from unimim.config import ConfigError, merge_recipes, read_yaml, to_dict

ROOT = Path(__file__).resolve().parents[1]
FLAT = sorted((ROOT / "tests/recipes_flat").rglob("*.yaml"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_merge_rules():
    base = {"a": 1, "train": {"steps": 10, "batch_size": 4}, "betas": [0.9, 0.95], "method": {"ema": {"decay": 0.9,
                                                                                                        "copy": ["x"]}}}
    over = {"train": {"steps": 20}, "betas": [0.9], "method": {"ema": {"copy": []}}, "b": None}
    merged = merge_recipes(base, over)
    assert merged == {"a": 1, "train": {"steps": 20, "batch_size": 4}, "betas": [0.9],
                      "method": {"ema": {"decay": 0.9, "copy": []}}, "b": None}
    assert base["train"] == {"steps": 10, "batch_size": 4}  # inputs untouched
    # a mapping over a non-mapping (and the reverse) replaces
    assert merge_recipes({"s": None}, {"s": {"k": 1}}) == {"s": {"k": 1}}
    assert merge_recipes({"s": {"k": 1}}, {"s": None}) == {"s": None}


def test_chain_of_bases_relative_paths(tmp_path):
    _write(tmp_path / "common/root.yaml", "modality: image\ntrain:\n  steps: 7\n  batch_size: 4\n  log_every: 2\n")
    _write(tmp_path / "common/mid.yaml", "base: root.yaml\ntrain:\n  batch_size: 8\noptim:\n  betas: [0.9, 0.95]\n")
    leaf = _write(tmp_path / "runs/leaf.yaml", "base: ../common/mid.yaml\nname: leaf\ntrain:\n  log_every: 3\n"
                                               "optim:\n  betas: [0.8, 0.9]\n")
    raw = read_yaml(leaf)
    assert raw == {"modality": "image", "train": {"steps": 7, "batch_size": 8, "log_every": 3},
                   "optim": {"betas": [0.8, 0.9]}, "name": "leaf"}
    cfg = load_recipe(leaf, ["train.steps=9"])  # overrides still apply last
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.log_every, cfg.optim.betas) == (9, 8, 3, (0.8, 0.9))
    assert "base" not in to_dict(cfg)


def test_base_by_name_is_a_shipped_recipe(tmp_path):
    mine = _write(tmp_path / "mine.yaml", "base: image/mae_fmnist_cpu\nname: mine\ntrain:\n  steps: 10\n")
    cfg = load_recipe(mine)
    shipped = load_recipe("image/mae_fmnist_cpu")
    expected = to_dict(shipped)
    expected["name"], expected["train"]["steps"] = "mine", 10
    assert to_dict(cfg) == expected


def test_cycles_are_refused(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: c.yaml\n")
    _write(tmp_path / "c.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"recipe base cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        read_yaml(a)
    me = _write(tmp_path / "me.yaml", "base: me.yaml\n")
    with pytest.raises(ConfigError, match="recipe base cycle"):
        load_recipe(me)


def test_bad_bases_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"base 'nope.yaml' not found"):
        read_yaml(_write(tmp_path / "r1.yaml", "base: nope.yaml\n"))
    with pytest.raises(ConfigError, match="base must be a recipe name or a path"):
        read_yaml(_write(tmp_path / "r2.yaml", "base: [a.yaml]\n"))
    with pytest.raises(ConfigError, match="recipe not found: image/mae_fmnist.*close matches: image/mae_fmnist_cpu"):
        load_recipe(_write(tmp_path / "r3.yaml", "base: image/mae_fmnist\n"))
    with pytest.raises(ConfigError, match="is a recipe name, and no recipe catalogue"):
        read_yaml(tmp_path / "r3.yaml")  # the library alone resolves paths only
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes'"):  # a base's keys are checked too
        _write(tmp_path / "b4.yaml", "train:\n  stpes: 3\n")
        load_recipe(_write(tmp_path / "r4.yaml", "base: b4.yaml\n"))


@pytest.mark.parametrize("flat", FLAT, ids=lambda p: p.stem)
def test_split_recipes_resolve_as_their_flat_originals(flat):
    recipe = ROOT / "recipes" / flat.relative_to(ROOT / "tests/recipes_flat")
    assert "base" in yaml.safe_load(recipe.read_text()), f"{recipe} no longer uses base:; drop its flat copy"
    assert "base" not in yaml.safe_load(flat.read_text())
    assert to_dict(load_recipe(recipe)) == to_dict(load_recipe(flat))


def test_config_command_prints_the_merged_recipe(tmp_path, capsys):
    assert main(["config", "image/mae_fmnist_cpu"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in printed
    assert printed["data"]["root"] == "/usr/share/datasets/fashion-mnist"  # from the base
    assert printed["masking"]["ratio"] == 0.75 and printed["optim"]["betas"] == [0.9, 0.95]  # from the recipe
    assert printed == to_dict(load_recipe(ROOT / "tests/recipes_flat/image/mae_fmnist_cpu.yaml"))


def test_cycle_on_the_command_line_is_exit_2(tmp_path, caplog):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with caplog.at_level(logging.ERROR):
        assert main(["config", str(tmp_path / "a.yaml")]) == 2
    assert "recipe base cycle" in caplog.text


def test_the_shipped_base_is_found_by_name_but_is_not_a_recipe():
    assert find_recipe("image/_base/fmnist_cpu") == ROOT / "recipes/image/_base/fmnist_cpu.yaml"
    assert "objective" not in read_yaml(find_recipe("image/_base/fmnist_cpu"))
