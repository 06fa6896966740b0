"""Image fine-tune recipes (``recipes/image/finetune_*.yaml``): each loads strictly, and the paper-scale ones carry
the published hyper-parameters (sources: ../shared/reference/masked-image-modeling.md (MIM), data2vec.md (D2V)).
The speech and text fine-tune recipes have their own audits (tests/modalities/{speech,text}/test_finetune_recipes.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unimim.config import ConfigError, from_dict, read_yaml
from unimim.eval.finetune import FinetuneConfig
from unimim.train.optim import peak_lr

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(ROOT.joinpath("recipes/image").glob("finetune_*.yaml"))
MIM, D2V = "masked-image-modeling.md", "data2vec.md"

# (key, published value, source); "lr@1024" is the peak lr at the reference's batch of 1024
AUDIT = {
    "finetune_mae_vitb16_in1k.yaml": [
        ("epochs", 100, f"{MIM} §1.1 MAE FINETUNE.md"), ("lr@1024", 5e-4 * 1024 / 256, f"{MIM} §1.1 blr 5e-4"),
        ("effective_batch", 1024, f"{MIM} §1.1"), ("layer_decay", 0.65, f"{MIM} §1.1"),
        ("optim.weight_decay", 0.05, f"{MIM} §1.1"), ("drop_path", 0.1, f"{MIM} §1.1"), ("mixup", 0.8, f"{MIM} §1.1"),
        ("cutmix", 1.0, f"{MIM} §1.1"), ("label_smoothing", 0.1, f"{MIM} §1.1"), ("warmup_epochs", 5, f"{MIM} §1.1"),
        ("task.rand_augment", "rand-m9-mstd0.5-inc1", f"{MIM} §1.1"), ("task.random_erasing", 0.25, f"{MIM} §1.1"),
        ("pool", "mean", f"{MIM} §1.1 --global_pool"), ("fc_norm", True, f"{MIM} §1.1 --global_pool"),
    ],
    "finetune_beit_vitb16_in1k.yaml": [
        ("epochs", 100, f"{MIM} §1.3 BEiT"), ("lr@1024", 4e-3, f"{MIM} §1.3 lr 4e-3 @1024"),
        ("effective_batch", 1024, f"{MIM} §1.3"), ("warmup_epochs", 20, f"{MIM} §1.3"),
        ("layer_decay", 0.65, f"{MIM} §1.3"), ("drop_path", 0.1, f"{MIM} §1.3"), ("mixup", 0.8, f"{MIM} §1.3"),
        ("cutmix", 1.0, f"{MIM} §1.3"), ("head_init_scale", 0.001, "beit modeling_finetune.py init_scale"),
    ],
    "finetune_data2vec_vitb16_in1k.yaml": [
        ("epochs", 100, f"{D2V} §2 fine-tuning recipes (v1)"), ("lr@1024", 4e-3, f"{D2V} §2 lr 4e-3, bs 1024"),
        ("effective_batch", 1024, f"{D2V} §2"), ("layer_decay", 0.65, f"{D2V} §2"), ("drop_path", 0.2, f"{D2V} §2"),
        ("mixup", 0.8, f"{D2V} §2"), ("cutmix", 1.0, f"{D2V} §2"),
    ],
}


def _load(path: Path) -> tuple[FinetuneConfig, dict]:
    raw = read_yaml(path)
    assert set(raw) <= {"finetune", "task", "probe", "train"}, f"{path.name}: a fine-tune recipe changes no run"
    return from_dict(FinetuneConfig, raw["finetune"], "finetune"), raw.get("task", {})


def _value(cfg: FinetuneConfig, task: dict, key: str):
    if key == "lr@1024":
        return peak_lr(cfg.optim, 1024)
    if key == "effective_batch":
        return cfg.effective_batch
    if key.startswith("task."):
        return task[key[5:]]
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_every_paper_scale_fine_tune_recipe_is_audited():
    assert {p.name for p in RECIPES if not p.stem.endswith("_cpu")} == set(AUDIT)


def test_every_fine_tune_recipe_lies_in_a_modality_folder():
    """All fine-tune recipes are ``recipes/<modality>/finetune_*.yaml``, and this file audits the image ones."""
    from unimim.app.registry import MODALITIES

    found = sorted(ROOT.joinpath("recipes").rglob("finetune_*.yaml"))
    assert {p.parent.name for p in found} <= set(MODALITIES)
    assert all(p.parent.parent == ROOT / "recipes" for p in found)
    assert RECIPES and set(RECIPES) == {p for p in found if p.parent.name == "image"}


@pytest.mark.parametrize(("recipe", "key", "reference", "source"),
                         [(r, *row) for r, rows in AUDIT.items() for row in rows])
def test_fine_tune_recipe_matches_the_reference(recipe, key, reference, source):
    cfg, task = _load(ROOT / "recipes/image" / recipe)
    assert _value(cfg, task, key) == pytest.approx(reference), f"{recipe}: {key} (reference: {source})"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_fine_tune_recipe_loads_strictly(path):
    from modalities.image.data.task import ImageTaskConfig

    cfg, task = _load(path)
    from_dict(ImageTaskConfig, task, "task")
    with pytest.raises(ConfigError, match="unknown config key 'finetune.lr'"):
        from_dict(FinetuneConfig, {"lr": 1.0}, "finetune")
