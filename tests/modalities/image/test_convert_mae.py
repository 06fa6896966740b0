"""Parity of the MAE objective with ``transformers.ViTMAEForPreTraining`` and of the image backbone with timm's
``VisionTransformer``: randomly initialised tiny models (then perturbed, so zero-initialised biases and tokens cannot
hide a layout bug) load through the converters and give the same loss / reconstruction / features in fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modalities.image.interop.convert_mae import from_hf_vit_mae, hf_mae_config_to_unimim
from modalities.image.interop.convert_timm import from_timm_vit, load_timm_vit, timm_vit_config_to_unimim
from modalities.image.model.adapter import ImageAdapter
from modalities.image.objectives.mae import MAE
from unimim.core.batch import Batch
from unimim.nn.encoder import TransformerEncoder

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

ATOL = 1e-4


def _hf_model(norm_pix_loss: bool = True, **kw) -> nn.Module:
    cfg = transformers.ViTMAEConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
        decoder_intermediate_size=64, mask_ratio=0.75, norm_pix_loss=norm_pix_loss, layer_norm_eps=1e-6,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw,
    )
    model = transformers.ViTMAEForPreTraining(cfg).eval()
    # transformers 5.x leaves both fixed position tables at zero in a randomly initialised model (the decoder's is
    # zeroed by _init_weights, the encoder's initialisation is skipped once the patch projection counts as
    # initialised); fill them with transformers' own sin-cos builder, as a converted checkpoint carries them
    with torch.no_grad():
        proj = model.vit.embeddings.patch_embeddings.projection
        if hasattr(proj, "_is_hf_initialized"):
            del proj._is_hf_initialized
        model.vit.embeddings.initialize_weights()
        model.decoder.initialize_weights(model.vit.embeddings.patch_embeddings.num_patches)
    assert model.vit.embeddings.position_embeddings.abs().sum() > 0
    _perturb(model, seed=1)
    return model


@torch.no_grad()
def _perturb(model: nn.Module, seed: int) -> None:
    """Add N(0, 0.1^2) to every trainable parameter; tokens get N(0, 1); fixed position tables stay fixed."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        noise = torch.randn(p.shape, generator=g)
        if name.endswith(("cls_token", "mask_token")):
            p.copy_(noise)
        elif name.endswith("gamma"):
            p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=g))
        else:
            p.add_(0.1 * noise)


def _ours_from_hf(hf: nn.Module) -> MAE:
    adapter_cfg, encoder_cfg, method_cfg, _ = hf_mae_config_to_unimim(hf.config)
    adapter = ImageAdapter(adapter_cfg, dim=encoder_cfg.dim, num_heads=encoder_cfg.num_heads)
    ours = MAE(adapter, TransformerEncoder(encoder_cfg), method_cfg).eval()
    state = from_hf_vit_mae(hf.state_dict(), depth=encoder_cfg.depth,
                            decoder_depth=method_cfg.decoder.depth, grid=adapter_cfg.grid)
    ours.load_state_dict(state, strict=True)
    return ours


def _mask_from_noise(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """MAE's rule, written out independently: the int(N (1 - ratio)) patches with the smallest noise stay visible."""
    b, n = noise.shape
    keep = int(n * (1 - ratio))
    mask = torch.ones(b, n, dtype=torch.bool)
    rows = torch.arange(b)[:, None]
    mask[rows, noise.argsort(dim=1)[:, :keep]] = False
    return mask


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_vit_mae_same_loss_and_reconstruction(norm_pix_loss):
    torch.manual_seed(0)
    hf = _hf_model(norm_pix_loss)
    ours = _ours_from_hf(hf)
    images, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    mask = _mask_from_noise(noise, hf.config.mask_ratio)
    with torch.no_grad():
        ref = hf(pixel_values=images, noise=noise)
        out = ours(Batch(inputs=images, mask=mask))
        pred = ours.predict(images, mask)
    assert torch.equal(ref.mask.bool(), mask)
    torch.testing.assert_close(pred, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=ATOL, rtol=0)
    # the displayed reconstruction undoes the normalisation with the original patch statistics
    target = hf.patchify(images)
    if norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        expected = hf.unpatchify(ref.logits * (var + 1e-6) ** 0.5 + mean)
    else:
        expected = hf.unpatchify(ref.logits)
    with torch.no_grad():
        torch.testing.assert_close(ours.reconstruct(images, mask), expected, atol=ATOL, rtol=0)


def test_vit_mae_converter_refuses_learned_positions_and_missing_layers():
    hf = _hf_model()
    state = dict(hf.state_dict())
    state["vit.embeddings.position_embeddings"] = state["vit.embeddings.position_embeddings"] + 0.1
    with pytest.raises(ValueError, match="sin-cos"):
        from_hf_vit_mae(state, depth=3, decoder_depth=2, grid=(4, 4))
    state = {k: v for k, v in hf.state_dict().items() if not k.startswith("vit.layers.2.")}
    with pytest.raises(ValueError, match="expected layers"):
        from_hf_vit_mae(state, depth=3, decoder_depth=2, grid=(4, 4))


def _timm_vit(**kw) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=3, num_heads=4,
                              num_classes=10, **kw).eval()
    _perturb(model, seed=2)
    return model


@pytest.mark.parametrize("kw", [{}, {"init_values": 0.1}], ids=["plain", "layer_scale"])
def test_timm_vit_same_features(kw):
    torch.manual_seed(0)
    model = _timm_vit(**kw)
    backbone = load_timm_vit(model).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.forward_features(images)  # (B, 1 + N, D) after the final norm
        ours = backbone["encoder"](backbone["adapter"].embed(images)).x
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_timm_vit_with_mae_positions_loads_into_sincos_adapter():
    """An MAE-style timm encoder (fixed sin-cos pos_embed) loads into the adapter's fixed table: equal features."""
    from unimim.nn.pos_embed import sincos_2d

    model = _timm_vit()
    with torch.no_grad():
        model.pos_embed.copy_(torch.cat([torch.zeros(1, 64), sincos_2d(64, (4, 4))]).unsqueeze(0))
    backbone = load_timm_vit(model, positions="sincos").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone["encoder"](backbone["adapter"].embed(images)).x,
                                   model.forward_features(images), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sin-cos"):
        from_timm_vit(_timm_vit().state_dict(), depth=3, positions="sincos")


def test_timm_vit_unsupported_variants_are_refused():
    with pytest.raises(ValueError, match="register"):
        timm_vit_config_to_unimim(_timm_vit(reg_tokens=2))
    with pytest.raises(ValueError, match="qk_norm"):
        timm_vit_config_to_unimim(_timm_vit(qk_norm=True))
