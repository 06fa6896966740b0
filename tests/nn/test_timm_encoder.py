"""encoder.backend: timm — timm's ViT blocks behind the encoder interface, against timm's own forward_features and
against unimim's TransformerEncoder; what the config refuses."""

from __future__ import annotations

import pytest
import timm
import torch

from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from unimim.config import ConfigError, from_dict
from unimim.nn.encoder import EncoderConfig, TransformerEncoder, build_encoder
from unimim.nn.timm_encoder import TimmEncoder
from unimim.nn.tokens import Tokens
from unimim.objectives.base import Objective

TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2}


def timm_cfg(kwargs: dict | None = None, **fields) -> EncoderConfig:
    """A 32-wide, 3-block, 2-head timm ViT-Ti encoder config (timm's size given in timm_kwargs)."""
    return EncoderConfig(dim=32, depth=3, num_heads=2, backend="timm", timm_model="vit_tiny_patch16_224",
                         timm_kwargs={**TINY, **(kwargs or {})}, **fields)


def adapter(positions: str = "learned") -> ImageAdapter:
    return ImageAdapter(ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1, positions=positions),
                        dim=32, num_heads=2)


@pytest.mark.parametrize("extra, fields", [
    ({}, {}),
    ({"init_values": 0.1}, {"layer_scale_init": 0.1}),  # layer scale
    ({"qk_norm": True, "pre_norm": True}, {}),          # q/k LayerNorm, a LayerNorm before the blocks (norm_pre)
])
def test_equals_timm_forward_features(extra, fields):
    """The adapter embeds, timm's blocks encode: with the adapter's patch embedding, cls token and positions copied
    into a complete timm ViT, timm's own forward_features on the images gives the same output."""
    torch.manual_seed(0)
    cfg = timm_cfg(extra, **fields)
    ad, enc = adapter(), TimmEncoder(cfg).eval()
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, in_chans=1,
                            **TINY, **extra).eval()
    with torch.no_grad():
        if ref.patch_embed.proj.bias is None:  # timm's pre_norm ViTs embed patches without a bias
            ad.patch_embed.bias.zero_()
            ref.patch_embed.proj.weight.copy_(ad.patch_embed.weight)
        else:
            ref.patch_embed.proj.load_state_dict(ad.patch_embed.state_dict())
        ref.cls_token.copy_(ad.cls_token)
        ref.pos_embed.copy_(ad.pos_embed)  # (1, 1 + N, D): timm adds positions to cls + patches, as the adapter
    missing, unexpected = ref.load_state_dict(enc.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("patch_embed", "cls_token", "pos_embed", "head")) for k in missing)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        ours = enc(ad.embed(x))
        theirs = ref.forward_features(x)
        torch.testing.assert_close(ours.x, theirs, atol=1e-5, rtol=1e-5)
        # every block output is timm's block applied to the previous one
        h = ref.norm_pre(ad.embed(x).x)
        for i, block in enumerate(ref.blocks):
            h = block(h)
            torch.testing.assert_close(ours.layers[i], h, atol=1e-5, rtol=1e-5)


def unimim_twin(timm_enc: TimmEncoder, **fields) -> TransformerEncoder:
    """unimim's encoder of the same architecture with the timm encoder's weights (the parameter names agree)."""
    enc = TransformerEncoder(EncoderConfig(dim=32, depth=3, num_heads=2, **fields))
    enc.load_state_dict(timm_enc.state_dict(), strict=True)
    return enc


@pytest.mark.parametrize("extra, fields", [({}, {}), ({"init_values": 0.1}, {"layer_scale_init": 0.1})])
def test_equals_unimim_encoder_with_padding_and_bias(extra, fields):
    """Pre-LN ViT blocks: the same block outputs, FFN outputs and final output as unimim's TransformerEncoder, with
    a padding mask and an additive bias (the relative position bias path), on the full and the visible subset."""
    torch.manual_seed(0)
    ours = TimmEncoder(timm_cfg(extra, **fields)).eval()
    peer = unimim_twin(ours, **fields).eval()
    x = torch.randn(2, 7, 32)
    pad = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    bias = torch.randn(1, 2, 7, 7)
    keep = torch.tensor([[0, 2, 3, 6], [0, 1, 4, 5]])
    cases = [Tokens(x), Tokens(x, padding_mask=pad), Tokens(x, attn_bias=bias), Tokens(x, pad, bias),
             Tokens(x, pad, bias).select(keep)]
    with torch.no_grad():
        for tokens in cases:
            a, b = ours(tokens), peer(tokens)
            real = slice(None) if tokens.padding_mask is None else ~tokens.padding_mask
            torch.testing.assert_close(a.x[real], b.x[real], atol=1e-5, rtol=1e-5)
            for name in ("layers", "ffn"):
                for u, v in zip(getattr(a, name), getattr(b, name), strict=True):
                    torch.testing.assert_close(u[real], v[real], atol=1e-5, rtol=1e-5)


def test_padding_is_an_attention_mask():
    """Padded tokens (here of huge values) change nothing at the real ones."""
    torch.manual_seed(0)
    enc = TimmEncoder(timm_cfg()).eval()
    x = torch.randn(1, 4, 32)
    padded = torch.cat([x, torch.randn(1, 3, 32) * 100], dim=1)
    pad = torch.tensor([[False] * 4 + [True] * 3])
    with torch.no_grad():
        torch.testing.assert_close(enc(Tokens(padded, padding_mask=pad)).x[:, :4], enc(Tokens(x)).x,
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(enc(Tokens(padded)).x[:, :4], enc(Tokens(x)).x, atol=1e-3)  # without it: leaks


def test_drop_path_and_dropout_follow_the_encoder_config_and_match_unimim_in_training():
    """encoder.drop_path / dropout set timm's rates with the same per-block rule; in training mode, from the same
    seed, the timm encoder draws the same stochastic depth and dropout as unimim's."""
    torch.manual_seed(0)
    ours = TimmEncoder(timm_cfg(drop_path=0.4, dropout=0.1)).train()
    assert [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in ours.blocks] == pytest.approx([0.0, 0.2, 0.4])
    assert ours.blocks[0].mlp.drop1.p == ours.blocks[0].attn.proj_drop.p == 0.1
    peer = unimim_twin(ours, drop_path=0.4, dropout=0.1).train()
    x = torch.randn(8, 5, 32)
    torch.manual_seed(1)
    a = ours(Tokens(x)).x
    torch.manual_seed(1)
    b = peer(Tokens(x)).x
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.manual_seed(2)
    assert not torch.allclose(ours(Tokens(x)).x, a)  # it is random


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = TimmEncoder(timm_cfg(drop_path=0.3)).train()
    ckpt = TimmEncoder(timm_cfg(drop_path=0.3, grad_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 5, 32)
    grads = []
    for enc in (plain, ckpt):
        torch.manual_seed(3)
        out = enc(Tokens(x))
        (out.x.square().mean() + out.ffn[0].mean()).backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
    for g, h in zip(*grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5)


def test_encode_layers_on_a_timm_backbone():
    """Objective.encode(layers=...) averages the chosen timm block outputs (computed here with timm's blocks)."""
    torch.manual_seed(0)
    model = Objective(adapter("sincos"), build_encoder(timm_cfg())).eval()
    assert model.num_layers == 3
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        h, outs = model.adapter.embed(x).x, []
        for block in model.encoder.blocks:
            h = block(h)
            outs.append(h)
        torch.testing.assert_close(model.encode(x, layers=[-1]), outs[2])
        torch.testing.assert_close(model.encode(x, layers=[0, -2]), (outs[0] + outs[1]) / 2)
        torch.testing.assert_close(model.encode(x), model.encoder.norm(outs[2]))
    with pytest.raises(ValueError, match="not block indices"):
        model.encode(x, layers=[3])


def test_timm_size_encoder_passes_the_size():
    cfg = EncoderConfig(dim=48, depth=2, num_heads=3, backend="timm", timm_model="vit_small_patch16_224",
                        timm_size="encoder")
    enc = TimmEncoder(cfg)
    assert len(enc.blocks) == 2 and enc.blocks[0].attn.num_heads == 3 and enc.norm.normalized_shape == (48,)
    # timm's embedding and head are not kept: every parameter is a block's or the final norm's
    assert {k.split(".")[0] for k in enc.state_dict()} == {"blocks", "norm"}


def load(raw: dict):
    return from_dict(EncoderConfig, raw, "encoder")


BASE = {"backend": "timm", "timm_model": "vit_tiny_patch16_224", "dim": 32, "depth": 3, "num_heads": 2,
        "timm_kwargs": dict(TINY)}


@pytest.mark.parametrize("change, message", [
    ({"dim": 64, "num_heads": 4}, r"encoder.dim=64 but the timm model has embed_dim=32"),
    ({"timm_kwargs": {"embed_dim": 48, "depth": 3, "num_heads": 2}}, r"encoder.dim=32 but .* embed_dim=48"),
    ({"depth": 4}, r"encoder.depth=4 but the timm model has blocks=3"),
    ({"mlp_ratio": 2.0}, r"mlp_ratio=2.0 but the timm model's MLP is 128 wide"),
    ({"qkv_bias": "qv"}, r"no q/v-only bias"),
    ({"norm_first": False}, r"timm's Block is pre-LN"),
    ({"layer_scale_init": 0.1}, r"layer_scale_init=0.1 but the timm model has init_values=None"),
    ({"norm_eps": 1e-5}, r"norm_eps=1e-05 but .* eps=1e-06"),
    ({"act_dropout": 0.1}, r"leave act_dropout null"),
    ({"init_std": 0.01}, r"leave init_std at 0.02"),
    ({"timm_model": "vit_tiny_patch16_22"}, r"is not a timm model; did you mean vit_tiny_patch16_224"),
    ({"timm_model": None}, r"needs encoder.timm_model"),
    ({"timm_model": "eva02_tiny_patch14_224", "timm_kwargs": {}}, r"builds a timm Eva"),
    ({"timm_kwargs": {**TINY, "reg_tokens": 4}}, r"register tokens"),
    ({"timm_model": "vit_small_patch16_18x2_224"}, r"block 0 has a ParallelThingsBlock block"),
    ({"timm_kwargs": {**TINY, "drop_path_rate": 0.1}}, r"timm_kwargs.drop_path_rate .*set encoder.drop_path"),
    ({"timm_kwargs": {**TINY, "checkpoint_path": "w.pth"}}, r"never loaded from a file"),
    ({"timm_kwargs": {**TINY, "no_such_arg": 1}}, r"create_model.*unexpected keyword argument 'no_such_arg'"),
    ({"timm_size": "encoder"}, r"timm_kwargs.embed_dim is not accepted with encoder.timm_size: encoder"),
])
def test_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        load({**BASE, **change})


def test_timm_settings_need_the_timm_backend():
    with pytest.raises(ConfigError, match="apply to encoder.backend: timm"):
        load({"timm_model": "vit_tiny_patch16_224"})
    assert isinstance(build_encoder(EncoderConfig(dim=8, depth=1, num_heads=2)), TransformerEncoder)
