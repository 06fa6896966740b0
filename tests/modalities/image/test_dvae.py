"""The dVAE tokenizer (BEiT stage 1): schedules, KL, perplexity, hard codes, usage warning, save/load, training."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from modalities.image.model.adapter import ImageAdapterConfig
from modalities.image.objectives.dvae import (
    DVAEObjectiveConfig,
    DVAETraining,
    code_perplexity,
    kl_to_uniform,
    kl_weight_at,
    temperature_at,
)
from modalities.image.objectives.tokenizer.dvae import DiscreteVAE, DVAEConfig, load_tokenizer
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.core.batch import Batch

ROOT = Path(__file__).resolve().parents[3]
SMALL = DVAEConfig(image_size=16, in_chans=1, codebook_size=16, embed_dim=8, hidden=8, num_layers=2)


def _objective(**kw) -> DVAETraining:
    return DVAETraining(DVAEObjectiveConfig(model=SMALL, **kw), ImageAdapterConfig(image_size=16, patch_size=4,
                                                                                   in_chans=1))


def test_temperature_and_kl_schedules_hand_values():
    cfg = DVAEObjectiveConfig(temperature=1.0, end_temperature=1 / 16, temperature_steps=100, kl_weight=6.6,
                              kl_warmup_steps=50)
    assert temperature_at(cfg, 0) == pytest.approx(1.0)
    assert temperature_at(cfg, 50) == pytest.approx((1 + 1 / 16) / 2)  # cosine midpoint
    assert temperature_at(cfg, 100) == pytest.approx(1 / 16) and temperature_at(cfg, 10_000) == pytest.approx(1 / 16)
    assert kl_weight_at(cfg, 0) == 0.0 and kl_weight_at(cfg, 25) == pytest.approx(3.3)
    assert kl_weight_at(cfg, 50) == pytest.approx(6.6) and kl_weight_at(cfg, 500) == pytest.approx(6.6)


def test_kl_and_perplexity_hand_values():
    k = 8
    assert float(kl_to_uniform(torch.zeros(2, k, 3, 3))) == pytest.approx(0.0, abs=1e-6)
    peaked = torch.full((1, k, 1, 1), -1e4)
    peaked[0, 3] = 0.0
    assert float(kl_to_uniform(peaked)) == pytest.approx(math.log(k), rel=1e-5)  # one-hot: KL = log K
    assert float(code_perplexity(torch.full((50,), 2), k)) == pytest.approx(1.0)
    assert float(code_perplexity(torch.arange(k).repeat(5), k)) == pytest.approx(k)


def test_codes_are_the_argmax_on_the_patch_grid():
    torch.manual_seed(0)
    model = DiscreteVAE(SMALL)
    x = torch.randn(3, 1, 16, 16)
    codes = model.codes(x)
    assert codes.shape == (3, 16) and codes.dtype == torch.long  # 16 px / 2^2 = 4 x 4 grid
    assert torch.equal(codes, model.logits(x).argmax(1).flatten(1))
    assert model.decode_codes(codes).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 16, 16\)"):
        model.codes(torch.randn(1, 1, 28, 28))


@pytest.mark.parametrize("straight_through", [False, True])
def test_relaxed_pass_trains_the_encoder(straight_through):
    torch.manual_seed(0)
    obj = _objective(straight_through=straight_through)
    out = obj(Batch(inputs=torch.randn(2, 1, 16, 16)))
    out.loss.backward()
    assert obj.dvae.encoder[-1].weight.grad.abs().sum() > 0  # gradients reach the code logits
    assert obj.dvae.codebook.weight.grad.abs().sum() > 0


def test_grid_must_match_the_vit_patch_grid():
    with pytest.raises(ValueError, match=r"token grid \(4, 4\).*patch grid \(8, 8\)"):
        DVAETraining(DVAEObjectiveConfig(model=SMALL), ImageAdapterConfig(image_size=16, patch_size=2, in_chans=1))


def test_dead_codes_warn_and_usage_is_logged(caplog):
    torch.manual_seed(0)
    obj = _objective(usage_window=2, dead_code_warning=0.9)
    batch = Batch(inputs=torch.zeros(4, 1, 16, 16))  # constant images: the argmax code is the same everywhere
    obj(batch)
    obj.update_teacher(1)
    obj(batch)
    with caplog.at_level(logging.WARNING):
        obj.update_teacher(2)
    assert "most codes are dead" in caplog.text
    assert obj(batch).logs["codebook_usage"] == pytest.approx(1 / 16)


def test_save_load_roundtrip_is_frozen_and_identical(tmp_path):
    torch.manual_seed(0)
    model = DiscreteVAE(SMALL)
    path = model.save(tmp_path / "tok.safetensors")
    loaded = load_tokenizer(path)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(loaded.codes(x), model.codes(x))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(FileNotFoundError, match="dvae_fmnist_cpu.yaml"):
        load_tokenizer(tmp_path / "missing.pt")
    torch.save({"x": 1}, tmp_path / "junk.pt")
    with pytest.raises(RuntimeError, match="neither a unimim dVAE tokenizer"):
        load_tokenizer(tmp_path / "junk.pt")


def test_training_run_reduces_reconstruction_and_loads_as_tokenizer(tmp_path):
    recipe = ROOT / "recipes/image/dvae_fmnist_cpu.yaml"
    cfg = load_recipe(recipe, tiny_overrides("image", "dvae", tmp_path) + [
        f"train.out_dir={tmp_path}", "train.steps=30", "train.precision=fp32", "method.temperature_steps=30",
        "method.kl_warmup_steps=10", "method.usage_window=10", "optim.lr=0.003", "data.synthetic_size=128",
        "train.checkpoint_every=30"])
    result = pretrain(cfg, progress=False)
    assert sum(result.losses[-5:]) / 5 < 0.7 * sum(result.losses[:5]) / 5
    tok = load_tokenizer(cfg.run_dir)  # straight from the run directory
    assert tok.grid == (4, 4) and tok.cfg.codebook_size == 512
    from modalities.image.objectives.tokenizer.dvae import main

    assert main([str(cfg.run_dir)]) == 0  # export on its own
    again = load_tokenizer(cfg.run_dir / "tokenizer.safetensors")
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(again.codes(x), tok.codes(x))
    with pytest.raises(RuntimeError, match="not of a dVAE"):
        load_tokenizer(_data2vec_checkpoint(tmp_path))


def _data2vec_checkpoint(tmp_path: Path) -> Path:
    recipe = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
    cfg = load_recipe(recipe, tiny_overrides("image", "data2vec", tmp_path) + [f"train.out_dir={tmp_path}",
                                                                              "train.steps=1"])
    pretrain(cfg, progress=False)
    return cfg.run_dir / "model.safetensors"
