"""MAE and SimMIM objectives: what the encoder sees, where the loss is taken, and a few training steps each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.image.masking import RandomMaskGenerator, SimMIMMaskGenerator
from modalities.image.model.patches import normalize_patches, patchify, unpatchify
from modalities.image.objectives.mae import MAE
from modalities.image.objectives.simmim import SimMIM, pixel_mask
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.registry import build_objective
from unimim.core.batch import Batch

ROOT = Path(__file__).resolve().parents[3]


def build(recipe: str, *extra: str):
    cfg = load_recipe(ROOT / "recipes/image" / recipe)
    cfg = load_recipe(ROOT / "recipes/image" / recipe, tiny_overrides(cfg.modality, cfg.objective) + list(extra))
    torch.manual_seed(0)
    return build_objective(cfg).eval(), cfg


def masks(gen, b: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([gen(rng) for _ in range(b)]))  # (B, N)


def test_mae_encoder_sees_only_visible_patches():
    model, cfg = build("mae_fmnist_cpu.yaml", "encoder.drop_path=0.0")
    assert isinstance(model, MAE)
    mask = masks(RandomMaskGenerator(cfg.adapter.grid, 0.75), 4)  # 16 patches, 12 masked
    seen = []
    model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].x.shape[1]))
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        pred = model.predict(x, mask)
        # changing the pixels of masked patches cannot change the prediction
        p = patchify(x, 4)
        p[mask] = torch.randn_like(p[mask])
        pred2 = model.predict(unpatchify(p, 4, (4, 4), 1), mask)
    assert seen == [1 + 4, 1 + 4]  # cls + the 4 visible patches
    assert pred.shape == (4, 16, 16)
    torch.testing.assert_close(pred, pred2)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_is_mse_on_masked_patches_only(monkeypatch, norm_pix):
    model, cfg = build("mae_fmnist_cpu.yaml", f"method.norm_pix_loss={str(norm_pix).lower()}")
    x = torch.randn(2, 1, 16, 16)
    mask = masks(RandomMaskGenerator(cfg.adapter.grid, 0.75), 2)
    target = normalize_patches(patchify(x, 4)) if norm_pix else patchify(x, 4)  # (B, N, 16)
    noise = torch.randn_like(target)
    # a prediction that is wrong only on visible patches costs nothing
    monkeypatch.setattr(model, "predict", lambda inputs, m: target + noise * (~m).unsqueeze(-1))
    assert model(Batch(inputs=x, mask=mask)).loss.item() == pytest.approx(0.0, abs=1e-7)
    # wrong by `noise` on masked patches: the mean over masked patches of the per-patch mean squared error
    monkeypatch.setattr(model, "predict", lambda inputs, m: target + noise)
    expected = noise.pow(2).mean(-1)[mask].mean()
    assert model(Batch(inputs=x, mask=mask)).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mae_rejects_masks_it_cannot_use():
    model, _ = build("mae_fmnist_cpu.yaml")
    x = torch.randn(2, 1, 16, 16)
    uneven = torch.zeros(2, 16, dtype=torch.bool)
    uneven[0, :3], uneven[1, :5] = True, True
    with pytest.raises(ValueError, match="same number of masked patches"):
        model(Batch(inputs=x, mask=uneven))
    with pytest.raises(ValueError, match="num_masks"):
        model(Batch(inputs=x, mask=torch.ones(2, 3, 16, dtype=torch.bool)))
    with pytest.raises(ValueError, match="at least one masked patch"):
        model(Batch(inputs=x, mask=torch.zeros(2, 16, dtype=torch.bool)))


def test_pixel_mask_upsamples_each_patch():
    mask = torch.tensor([[True, False, False, True]])  # 2x2 grid
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(pixel_mask(mask, (2, 2), 2)[0, 0], expected)


@pytest.mark.parametrize("recipe", ["simmim_fmnist_cpu.yaml", "simmim_swin_fmnist_cpu.yaml"])
def test_simmim_loss_is_l1_on_masked_pixels_only(recipe, monkeypatch):
    model, cfg = build(recipe)
    x = torch.randn(2, 1, 16, 16)
    mask = masks(SimMIMMaskGenerator(16, 4, 8, 0.6), 2)
    m = pixel_mask(mask, (4, 4), 4)  # (B, 1, 16, 16)
    noise = torch.randn_like(x)
    monkeypatch.setattr(model, "reconstruct", lambda inputs, mk: x + noise * (1 - m))
    assert model(Batch(inputs=x, mask=mask)).loss.item() == pytest.approx(0.0, abs=1e-7)
    monkeypatch.setattr(model, "reconstruct", lambda inputs, mk: x + noise)
    expected = noise.abs()[m.expand_as(x).bool()].mean()  # one channel: the masked-pixel mean of |error|
    assert model(Batch(inputs=x, mask=mask)).loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("recipe", ["simmim_fmnist_cpu.yaml", "simmim_swin_fmnist_cpu.yaml"])
def test_simmim_mask_token_hides_masked_pixels(recipe):
    """The mask token replaces masked patch embeddings (after Swin's patch embedding): masked pixels cannot leak."""
    model, _ = build(recipe, "encoder.drop_path=0.0")
    assert isinstance(model, SimMIM)
    x = torch.randn(2, 1, 16, 16)
    mask = masks(SimMIMMaskGenerator(16, 4, 8, 0.6), 2)
    x2 = torch.where(pixel_mask(mask, (4, 4), 4).bool(), torch.randn_like(x), x)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x, mask), model.features(x2, mask))
        assert not torch.allclose(model.features(x), model.features(x2))
    if recipe.startswith("simmim_swin"):
        assert model.num_prefix_tokens == 0 and model.encode(x).shape == (2, 4, 32)  # 2x2 stride-8 tokens, 2 x 16


@pytest.mark.parametrize("recipe", ["mae_fmnist_cpu.yaml", "simmim_fmnist_cpu.yaml", "simmim_swin_fmnist_cpu.yaml"])
def test_a_few_steps_reduce_the_loss(recipe):
    """Train each objective (ViT and Swin for SimMIM) for a few steps on one batch: the loss must drop."""
    model, cfg = build(recipe, "encoder.drop_path=0.0")
    model.train()
    torch.manual_seed(1)
    x = torch.randn(8, 1, 16, 16).cumsum(-1) / 4  # smooth-ish images: something to reconstruct
    gen = (RandomMaskGenerator(cfg.adapter.grid, 0.75) if cfg.objective == "mae"
           else SimMIMMaskGenerator(16, 4, cfg.masking.mask_patch_size, 0.6))
    batch = Batch(inputs=x, mask=masks(gen, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
