"""Extending unimim as the README says: a new objective is its own class, its spec, one registry entry and a recipe.

The objective here is defined in the test itself and registered for the duration of the test only; nothing else in
the project knows it, yet the config loader, the load-time checks, pretraining, resume and the probe all work.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from modalities.base import ObjectiveSpec, require, vit_objective
from tests.conftest import tiny_overrides
from unimim.app import registry
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.app.probe import probe_run
from unimim.config import ConfigError
from unimim.core.batch import Batch
from unimim.objectives.base import Objective, ObjectiveOutput
from unimim.train.metrics import read_metrics


@dataclass
class PatchMeanConfig:
    weight: float = 1.0


class PatchMean(Objective):
    """Predict each masked patch's mean embedding input (a toy target) from the masked sequence."""

    def __init__(self, adapter: nn.Module, encoder: nn.Module, cfg: PatchMeanConfig) -> None:
        super().__init__(adapter, encoder)
        self.cfg = cfg
        self.head = nn.Linear(encoder.cfg.dim, 1)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        mask = batch.single_mask("patch-mean")  # (B, N)
        p = self.adapter.cfg.patch_size
        target = nn.functional.avg_pool2d(batch.inputs.float(), p).flatten(1)  # (B, C=1, H, W) -> (B, N)
        h = self.encoder(self.adapter.embed(batch.inputs, mask=mask)).x[:, self.num_prefix_tokens:]  # (B, N, D)
        pred = self.head(h).squeeze(-1)  # (B, N)
        loss = self.cfg.weight * ((pred - target) ** 2)[mask].mean()
        return ObjectiveOutput(loss=loss, logs={"target_mean": float(target[mask].mean())})


SPEC = ObjectiveSpec(
    config=PatchMeanConfig,
    build=vit_objective(PatchMean),
    modalities=("image",),
    check=lambda cfg: require(cfg.method.weight > 0, "method.weight must be > 0"),
    logs=frozenset({"target_mean"}),
)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(registry.OBJECTIVES, "patch_mean", SPEC)


def test_a_new_objective_runs_end_to_end(registered, tmp_path):
    recipe = tmp_path / "patch_mean.yaml"
    recipe.write_text("name: pm\nmodality: image\nobjective: patch_mean\nmasking:\n  kind: random\n  ratio: 0.5\n"
                      "method:\n  weight: 2.0\n")
    args = tiny_overrides("image", "patch_mean") + [f"train.out_dir={tmp_path}", "probe.epochs=2", "probe.knn_k=3"]
    cfg = load_recipe(recipe, args)
    result = pretrain(cfg, progress=False)
    rows = read_metrics(result.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and SPEC.logs <= rows[0].keys()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    out = probe_run(result.run_dir, progress=False)
    assert {r["encoder"] for r in out["results"]} == {"pretrained", "random"}
    with pytest.raises(ConfigError, match="method.weight must be > 0"):  # its own check, when the recipe loads
        load_recipe(recipe, [*args, "method.weight=0"])
    with pytest.raises(ConfigError, match="supports modalities"):
        load_recipe(recipe, [*args, "modality=text"])
