"""The labelled image task: Fashion-MNIST and folders at the run's geometry, the deterministic eval transform for
probes, fine-tuning augmentation (RandAugment included) reproducible per (seed, epoch, index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.image.data.dataset import eval_transform
from modalities.image.data.idx import FashionMNIST
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.registry import MODALITIES
from unimim.eval.finetune import TaskSource
from unimim.train.data import SeededDataset

ROOT = Path(__file__).resolve().parents[3]
RECIPE = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _cfg(*extra: str):
    return load_recipe(RECIPE, tiny_overrides("image", "data2vec") + list(extra))


@pytest.mark.skipif(not (FMNIST / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist")
def test_fashion_mnist_task_at_the_runs_geometry():
    cfg = _cfg("task.source=fashion_mnist", f"task.root={FMNIST}", "task.limit_test=8")
    task = MODALITIES["image"].build_task(cfg.task, cfg, False)
    raw = FashionMNIST(FMNIST, "test", limit=8)
    assert task.name == "fashion_mnist" and task.kind == "classification" and task.num_classes == 10
    batch = task.eval_collate([task.test[i] for i in range(8)])
    assert batch.inputs.shape == (8, 1, 16, 16)  # resized to the tiny run's 16 px
    assert batch.labels.tolist() == raw.targets.tolist()
    torch.testing.assert_close(batch.inputs[3], eval_transform(cfg.data)(raw[3][0]))


def test_probes_get_the_eval_transform_and_fine_tuning_reproducible_augmentation():
    cfg = _cfg("task.rand_augment=rand-m9-mstd0.5-inc1", "task.random_erasing=0.25")
    spec = MODALITIES["image"]
    plain = spec.build_task(cfg.task, cfg, False)
    torch.testing.assert_close(plain.train[5][0], plain.train[5][0])  # deterministic
    aug = spec.build_task(cfg.task, cfg, True)
    source = TaskSource(aug.train, aug.collate)
    a, b = SeededDataset(source, seed=3), SeededDataset(source, seed=3)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    x1, y1 = a[(0, 5)]
    x2, y2 = b[(0, 5)]
    torch.testing.assert_close(x1, x2)  # a function of (seed, epoch, index), RandAugment's Python RNG included
    assert y1 == y2 == plain.train[5][1]
    assert (np.random.get_state()[1] == before).all()  # the caller's streams are untouched
    others = [a[(e, 5)][0] for e in range(1, 4)]
    assert any(not torch.equal(x1, o) for o in others)  # another epoch, another view
    assert not torch.equal(x1, plain.train[5][0])


def test_bad_rand_augment_string_is_one_line():
    cfg = _cfg("task.rand_augment=rand-q9")
    with pytest.raises(ValueError, match="not a valid timm RandAugment string"):
        MODALITIES["image"].build_task(cfg.task, cfg, True)
