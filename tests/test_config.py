from pathlib import Path

import pytest
import yaml

from unimim.app.experiment import config_from_dict, load_recipe
from unimim.config import ConfigError, to_dict

# every shipped recipe; the bases they extend (image/_base/) are partial, loaded through them
_ROOT = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(p for p in _ROOT.rglob("*.yaml")
                 if not any(part.startswith("_") for part in p.relative_to(_ROOT).parts)
                 and not p.name.startswith("finetune_")  # fine-tune recipes: tests/app/test_finetune_recipes.py
                 and p.relative_to(_ROOT).parts[0] != "bench")  # suites: tests/app/test_bench.py
IMAGE_RECIPE = Path(__file__).resolve().parents[1] / "recipes/image/data2vec_fmnist_cpu.yaml"


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


def test_exponent_floats_are_numbers_in_recipes_and_overrides(tmp_path):
    p = _write(tmp_path, "optim:\n  lr: 1e-3\n  base_lr: null\n  min_lr: 1E-6\n  weight_decay: 5e-2\n")
    cfg = load_recipe(p, ["optim.eps=1e-9"])
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.eps) == (1e-3, 1e-6, 5e-2, 1e-9)
    assert load_recipe(p, ["name=1e3x"]).name == "1e3x"  # not a number: stays a string


def test_yaml_syntax_errors_and_duplicate_keys_are_one_line_naming_the_file(tmp_path):
    p = _write(tmp_path, "train:\n  steps: [1\n")
    with pytest.raises(ConfigError, match=rf"recipe {p} is not valid YAML: .*\(line \d+, column \d+\)$"):
        load_recipe(p)
    p = _write(tmp_path, "train:\n  steps: 10\n  batch_size: 4\n  steps: 20\n")
    with pytest.raises(ConfigError, match=rf"recipe {p}: duplicate key 'steps' \(line 4, column 3\)$"):
        load_recipe(p)
    with pytest.raises(ConfigError, match=r"override 'data.mean=\[0.5' is not valid YAML"):
        load_recipe(_write(tmp_path, "train:\n  steps: 10\n"), ["data.mean=[0.5"])


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1e-3", "optim.lr must be > 0, got -0.001"),
    ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
    ("optim.base_lr=-1", "optim.base_lr must be > 0"),
    ("optim.clip_grad=-1.0", r"optim.clip_grad must be > 0 \(null switches clipping off\)"),
    ("optim.weight_decay=-0.05", "optim.weight_decay must be >= 0"),
    ("optim.warmup_steps=-5", "optim.warmup_steps must be >= 0, got -5"),
    ("encoder.dim=0", "encoder.dim must be >= 1, got 0"),
    ("encoder.num_heads=0", "encoder.num_heads must be >= 1, got 0"),
    ("adapter.patch_size=0", "adapter.patch_size must be >= 1, got 0"),
    ("name=../../x", r"name='../../x' must be a relative path inside train.out_dir"),
    ("name=/tmp/x", r"name='/tmp/x' must be a relative path inside train.out_dir"),
    ("name=.", r"name='.' must be a relative path inside train.out_dir"),
])
def test_values_out_of_range_are_config_errors_naming_the_key(override, message):
    extra = {"optim.lr": ["optim.base_lr=null"], "optim.base_lr": ["optim.lr=null"]}.get(override.split("=")[0], [])
    with pytest.raises(ConfigError, match=message):
        load_recipe(IMAGE_RECIPE, [override, *extra])


def test_a_config_from_before_the_data2vec_split_is_one_clear_line():
    from unimim.app.experiment import config_from_dict

    with pytest.raises(ConfigError, match="objective: data2vec2"):
        config_from_dict({"modality": "image", "objective": "data2vec", "method": {"mode": "v2"}})
