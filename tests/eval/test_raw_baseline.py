"""The raw-input baseline: the probes on raw features of a task's splits (toy sets with known answers), and
``raw_baseline_run`` on the tiny config of every modality."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import Tensor

from tests.conftest import tiny_overrides
from unimim.app import baseline as baseline_app
from unimim.app.baseline import raw_baseline_run
from unimim.app.experiment import load_recipe
from unimim.config import ConfigError
from unimim.core.batch import Batch
from unimim.eval.probe import ProbeConfig
from unimim.eval.raw_baseline import raw_input_baseline, standardise

RECIPES = {"image": ("recipes/image/data2vec2_fmnist_cpu.yaml", "data2vec2"),
           "speech": ("recipes/speech/data2vec_tuxpaint_cpu.yaml", "data2vec"),
           "text": ("recipes/text/data2vec2_text_cpu.yaml", "data2vec2")}


class Rows(torch.utils.data.Dataset):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def collate(items: list[tuple[Tensor, int]]) -> Batch:
    return Batch(inputs=torch.stack([x for x, _ in items]), labels=torch.tensor([y for _, y in items]))


class Identity:
    """The raw features are the inputs; counts its fitting passes."""

    name = "identity"

    def __init__(self, dense: bool = True) -> None:
        self.dense, self.fitted = dense, 0

    def fit(self, batches) -> None:
        self.fitted += sum(1 for _ in batches)

    def transform(self, batch: Batch) -> Tensor:
        return batch.inputs.float()


def _separable(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = 5.0 * torch.eye(3, 8)  # class k around 5 e_k: unit-variance noise of 0.5 never crosses over
    return centres[y] + 0.5 * torch.randn(n, 8, generator=g), y


def test_separable_toy_set_reaches_one_and_output_is_json():
    (xtr, ytr), (xte, yte) = _separable(300, 0), _separable(100, 1)
    extractor = Identity()
    out = raw_input_baseline(Rows(xtr, ytr), Rows(xte, yte), collate, extractor, ProbeConfig(epochs=100, knn_k=5),
                             device="cpu", batch_size=64)
    assert out["linear"] == 1.0 and out["knn"] == 1.0 and out["linear_train"] == 1.0
    assert extractor.fitted == 5  # one pass over the 300 training rows in batches of 64
    assert out["features"] == "identity (8-d)" and out["dim"] == 8
    assert (out["num_train"], out["num_test"]) == (300, 100)
    assert out["labels"] == yte.tolist() and len(out["predictions"]) == 100
    assert json.loads(json.dumps(out)) == out


def test_random_labels_give_chance():
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    ytr, yte = torch.randint(0, 2, (600,), generator=g), torch.randint(0, 2, (600,), generator=g)
    out = raw_input_baseline(Rows(xtr, ytr), Rows(xte, yte), collate, Identity(), ProbeConfig(epochs=30),
                             device="cpu")
    assert 0.4 < out["linear"] < 0.6 and 0.4 < out["knn"] < 0.6
    acc = sum(p == y for p, y in zip(out["predictions"], out["labels"])) / 600
    assert acc == pytest.approx(out["linear"])


def test_dense_features_are_standardised_for_the_knn_and_sparse_ones_are_not():
    # column 0 separates the classes but is tiny; columns 1-3 are large noise: cosine kNN on the raw rows is ruled by
    # the noise, on standardised rows by both columns alike
    g = torch.Generator().manual_seed(0)

    def rows(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.cat([(0.01 * (2.0 * y - 1) + 0.001 * torch.randn(n, generator=g))[:, None],
                       100.0 * torch.randn(n, 3, generator=g)], dim=1)  # (n, 4)
        return x, y

    (xtr, ytr), (xte, yte) = rows(400), rows(200)
    cfg = ProbeConfig(epochs=20, knn_k=10)
    dense = raw_input_baseline(Rows(xtr, ytr), Rows(xte, yte), collate, Identity(True), cfg, device="cpu")
    sparse = raw_input_baseline(Rows(xtr, ytr), Rows(xte, yte), collate, Identity(False), cfg, device="cpu")
    assert dense["knn"] > 0.8 and sparse["knn"] < 0.62


def test_standardise_uses_the_training_statistics():
    xtr = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    xte = torch.tensor([[2.0, 6.0]])
    a, b = standardise(xtr, xte)
    assert torch.allclose(a, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(b, torch.tensor([[0.0, 1.0]]))  # the constant column is only centred


def test_batches_without_labels_are_a_clear_error():
    ds = Rows(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="Batch.labels"):
        raw_input_baseline(ds, ds, lambda items: Batch(inputs=torch.stack([x for x, _ in items])), Identity(),
                           ProbeConfig(epochs=1), device="cpu")


@pytest.mark.parametrize("modality", sorted(RECIPES))
def test_raw_baseline_run_on_the_tiny_config_of_every_modality(modality, tmp_path):
    recipe, objective = RECIPES[modality]
    cfg = load_recipe(recipe, tiny_overrides(modality, objective, tmp_path) + [f"train.out_dir={tmp_path}"])
    before = dataclasses.asdict(cfg)
    out = raw_baseline_run(cfg, device="cpu")
    assert out["modality"] == modality and out["task"]
    for key in ("linear", "linear_train", "knn"):
        assert 0.0 <= out[key] <= 1.0
    assert len(out["predictions"]) == len(out["labels"]) == out["num_test"] > 0
    assert out["dim"] == {"image": 16 * 16, "speech": 160}.get(modality, out["dim"])
    assert json.loads(json.dumps(out)) == out
    assert dataclasses.asdict(cfg) == before  # the caller's config is left as it was


def test_a_modality_without_a_raw_baseline_is_a_config_error(tmp_path, monkeypatch):
    recipe, objective = RECIPES["image"]
    cfg = load_recipe(recipe, tiny_overrides("image", objective, tmp_path) + [f"train.out_dir={tmp_path}"])
    spec = dataclasses.replace(baseline_app.MODALITIES["image"], raw_baseline=None)
    monkeypatch.setitem(baseline_app.MODALITIES, "image", spec)
    with pytest.raises(ConfigError, match="'image' declares no raw-input baseline"):
        raw_baseline_run(cfg)
