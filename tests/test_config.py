from pathlib import Path

import pytest
import yaml

from unimim.app.experiment import config_from_dict, load_recipe
from unimim.config import ConfigError, to_dict

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_strictly_and_round_trips(path):
    cfg = load_recipe(path)
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert to_dict(again) == to_dict(cfg)


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_and_suggestion(tmp_path):
    p = _write(tmp_path, "train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes'. Did you mean 'train.steps'\?"):
        load_recipe(p)


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match="'encodr'.*Did you mean 'encoder'"):
        load_recipe(_write(tmp_path, "encodr:\n  dim: 8\n"))


def test_wrong_type_and_literal(tmp_path):
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        load_recipe(_write(tmp_path, "train:\n  steps: many\n"))
    with pytest.raises(ConfigError, match="did you mean 'layer'"):
        load_recipe(_write(tmp_path, "method:\n  layer_norm: layr\n"))


def test_validation_errors_become_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="divisible"):
        load_recipe(_write(tmp_path, "encoder:\n  dim: 10\n  num_heads: 3\n"))


def test_overrides_apply_last_and_are_checked(tmp_path):
    p = _write(tmp_path, "train:\n  steps: 10\n")
    cfg = load_recipe(p, ["train.steps=20", "optim.betas=[0.9, 0.95]", "method.ema.decay=0.99"])
    assert cfg.train.steps == 20 and cfg.optim.betas == (0.9, 0.95) and cfg.method.ema.decay == 0.99
    with pytest.raises(ConfigError, match="'train.step'"):
        load_recipe(p, ["train.step=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_recipe(p, ["train.steps"])


def test_unknown_modality_and_objective(tmp_path):
    with pytest.raises(ConfigError, match="unknown modality 'video'"):
        load_recipe(_write(tmp_path, "modality: video\n"))
    with pytest.raises(ConfigError, match="unknown objective"):
        load_recipe(_write(tmp_path, "objective: simclr\n"))


def test_missing_recipe():
    with pytest.raises(ConfigError, match="recipe not found: /nope.yaml"):
        load_recipe("/nope.yaml")
