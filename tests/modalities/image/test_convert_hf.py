"""Numerical parity of the unimim image backbone with HF ``Data2VecVisionModel`` (via ``convert_hf``) and timm's ViT.

Every model is tiny, randomly initialised and then perturbed (HF initialises cls / mask tokens, the relative bias
table and biases to zeros and layer scales to a constant, which would hide layout bugs). Comparisons are fp32,
eval mode.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from modalities.image.interop.convert_hf import (
    from_hf_data2vec_vision,
    hf_config_to_unimim,
    reindex_relative_table,
    to_hf_data2vec_vision,
)
from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
from modalities.image.model.relative_position import relative_position_index
from unimim.nn.encoder import EncoderConfig, EncoderOutput, TransformerEncoder

transformers = pytest.importorskip("transformers")

logger = logging.getLogger(__name__)

ATOL = 1e-4
DEPTH = 3
BATCH = 2


def _hf_config(**overrides: object) -> transformers.Data2VecVisionConfig:
    """Tiny pre-training style config: 32x32x3 images, 8x8 patches (4x4 grid), D=64, 4 heads, F=128."""
    kwargs: dict[str, object] = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=DEPTH,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        use_shared_relative_position_bias=True,
        use_relative_position_bias=False,
        use_absolute_position_embeddings=False,
        use_mask_token=True,
        use_mean_pooling=False,
        layer_scale_init_value=0.1,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return transformers.Data2VecVisionConfig(**kwargs)


@torch.no_grad()
def _perturb(model: nn.Module, seed: int) -> None:
    """Add N(0, 0.1^2) to every parameter; give layer scales U(0.2, 1) and tables / tokens N(0, 1) values."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if name.endswith(("lambda_1", "lambda_2", "gamma")):
            p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=g))
        elif name.endswith(("relative_position_bias_table", "rel_pos.table", "cls_token", "mask_token")):
            p.copy_(noise)
        else:
            p.add_(0.1 * noise)


def _build_ours(cfg: transformers.Data2VecVisionConfig) -> nn.ModuleDict:
    """The unimim backbone matching ``cfg`` (random init)."""
    adapter_cfg, encoder_cfg = hf_config_to_unimim(cfg)
    adapter = ImageAdapter(adapter_cfg, dim=encoder_cfg.dim, num_heads=encoder_cfg.num_heads)
    return nn.ModuleDict({"adapter": adapter, "encoder": TransformerEncoder(encoder_cfg)}).eval()


def _build_hf(cfg: transformers.Data2VecVisionConfig) -> nn.Module:
    return transformers.Data2VecVisionModel(cfg).eval()


@torch.no_grad()
def _max_diff(hf: nn.Module, ours: nn.ModuleDict, images: Tensor, mask: Tensor | None) -> float:
    """Max |HF - unimim| over the embeddings, every block output and the final-normed last layer.

    images: (B, C, S, S); mask: (B, N) bool or None.
    """
    ref = hf(images, bool_masked_pos=mask, output_hidden_states=True)
    tokens = ours["adapter"].embed(images, mask=mask)
    out: EncoderOutput = ours["encoder"](tokens)
    assert len(ref.hidden_states) == len(out.layers) + 1
    diffs = [(ref.hidden_states[0] - tokens.x).abs().max().item()]
    diffs += [(h - o).abs().max().item() for h, o in zip(ref.hidden_states[1:], out.layers, strict=True)]
    diffs.append((ref.last_hidden_state - out.x).abs().max().item())
    logger.info("max abs diffs (embeddings, layers..., last): %s", diffs)
    return max(diffs)


def _inputs(cfg: transformers.Data2VecVisionConfig, seed: int) -> tuple[Tensor, Tensor]:
    """(B, C, S, S) images and a (B, N) bool mask with ~half the patches masked."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, cfg.num_channels, cfg.image_size, cfg.image_size, generator=g)
    n = (cfg.image_size // cfg.patch_size) ** 2
    mask = torch.rand(BATCH, n, generator=g) < 0.5
    return images, mask


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (4, 4), (7, 7), (3, 5)])
def test_relative_position_index_layout_matches_hf(grid: tuple[int, int]) -> None:
    bias_cls = transformers.models.data2vec.modeling_data2vec_vision.Data2VecVisionRelativePositionBias
    assert torch.equal(relative_position_index(grid), bias_cls.generate_relative_position_index(grid))


def test_hf_config_to_unimim() -> None:
    adapter_cfg, encoder_cfg = hf_config_to_unimim(_hf_config())
    assert adapter_cfg == ImageAdapterConfig(image_size=32, patch_size=8, in_chans=3, positions="relative")
    assert (encoder_cfg.dim, encoder_cfg.depth, encoder_cfg.num_heads, encoder_cfg.mlp_ratio) == (64, DEPTH, 4, 2.0)
    assert encoder_cfg.qkv_bias == "qv" and encoder_cfg.norm_first and encoder_cfg.final_norm
    assert encoder_cfg.layer_scale_init == 0.1 and encoder_cfg.norm_eps == 1e-6
    _, enc = hf_config_to_unimim(_hf_config(layer_scale_init_value=0.0, use_mean_pooling=True))
    assert enc.layer_scale_init is None and not enc.final_norm
    with pytest.raises(ValueError, match="per layer"):
        hf_config_to_unimim(_hf_config(use_relative_position_bias=True))
    with pytest.raises(ValueError, match="exactly one"):
        hf_config_to_unimim(_hf_config(use_absolute_position_embeddings=True))
    with pytest.raises(ValueError, match="GELU"):
        hf_config_to_unimim(_hf_config(hidden_act="relu"))


def test_from_hf_parity_relative_bias() -> None:
    torch.manual_seed(0)
    cfg = _hf_config()
    hf = _build_hf(cfg)
    _perturb(hf, seed=1)
    ours = _build_ours(cfg)
    ours.load_state_dict(from_hf_data2vec_vision(hf.state_dict(), depth=DEPTH), strict=True)

    grid = (cfg.image_size // cfg.patch_size,) * 2
    with torch.no_grad():
        hf_bias = hf.encoder.relative_position_bias(grid)  # (1, heads, T, T)
        assert (hf_bias - ours["adapter"].rel_pos()).abs().max().item() == 0.0

    images, mask = _inputs(cfg, seed=2)
    diff = _max_diff(hf, ours, images, None)
    diff_masked = _max_diff(hf, ours, images, mask)
    logger.info("from_hf relative: unmasked %.3g, masked %.3g", diff, diff_masked)
    assert diff < ATOL and diff_masked < ATOL


def test_to_hf_parity_and_round_trip() -> None:
    torch.manual_seed(3)
    cfg = _hf_config()
    ours = _build_ours(cfg)
    _perturb(ours, seed=4)
    exported = to_hf_data2vec_vision(ours.state_dict(), depth=DEPTH)
    hf = _build_hf(cfg)
    hf.load_state_dict(exported, strict=True)

    back = from_hf_data2vec_vision(exported, depth=DEPTH)
    original = ours.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)

    images, mask = _inputs(cfg, seed=5)
    diff = _max_diff(hf, ours, images, mask)
    logger.info("to_hf relative: masked %.3g", diff)
    assert diff < ATOL


def test_absolute_positions_mean_pooling_no_layer_scale() -> None:
    torch.manual_seed(6)
    cfg = _hf_config(
        use_shared_relative_position_bias=False,
        use_absolute_position_embeddings=True,
        layer_scale_init_value=0.0,
        use_mean_pooling=True,
    )
    hf = _build_hf(cfg)
    _perturb(hf, seed=7)
    ours = _build_ours(cfg)
    assert ours["adapter"].pos_embed is not None
    ours.load_state_dict(from_hf_data2vec_vision(hf.state_dict(), depth=DEPTH), strict=True)
    images, mask = _inputs(cfg, seed=8)
    diff = _max_diff(hf, ours, images, mask)
    logger.info("from_hf absolute: masked %.3g", diff)
    assert diff < ATOL

    fresh = _build_hf(cfg)
    fresh.load_state_dict(to_hf_data2vec_vision(ours.state_dict(), depth=DEPTH), strict=True)
    assert _max_diff(fresh, ours, images, mask) < ATOL


def test_prefix_pooler_and_missing_mask_token() -> None:
    cfg = _hf_config(use_mask_token=False, use_mean_pooling=True)
    model = transformers.Data2VecVisionForImageClassification(cfg)  # data2vec_vision. prefix, pooler, classifier
    hf_state = model.state_dict()
    assert "data2vec_vision.pooler.layernorm.weight" in hf_state
    state = from_hf_data2vec_vision(hf_state, depth=DEPTH, prefix="data2vec_vision.")
    assert not any(k.startswith("encoder.norm.") for k in state)
    assert torch.equal(state["adapter.mask_token"], torch.zeros(1, 1, cfg.hidden_size))
    ours = _build_ours(cfg)
    ours.load_state_dict(state, strict=True)
    hf_state = to_hf_data2vec_vision(ours.state_dict(), depth=DEPTH, include_mask_token=False)
    _build_hf(cfg).load_state_dict(hf_state, strict=True)


def test_reindex_relative_table() -> None:
    g = torch.Generator().manual_seed(9)
    grid = (3, 3)
    ours_index = relative_position_index(grid)  # (T, T)
    entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    table = torch.randn(entries, 4, generator=g)  # (E, heads) in unimim's layout

    # a foreign layout: the same pair classes, labelled by a random permutation of the entries
    relabel = torch.randperm(entries, generator=g)  # unimim entry e -> foreign entry relabel[e]
    foreign_index = relabel[ours_index]
    foreign_table = torch.empty_like(table)
    foreign_table[relabel] = table
    assert torch.equal(foreign_table[foreign_index], table[ours_index])
    assert torch.equal(reindex_relative_table(foreign_table, foreign_index), table)

    # a layout that merges two of unimim's classes differently cannot be re-indexed
    broken = ours_index.clone()
    broken[1, 2] = broken[2, 1]
    with pytest.raises(ValueError, match="re-labelling"):
        reindex_relative_table(table, broken)

    # transformers 4.x state dicts may carry the index buffer: the conversion goes through it
    cfg = _hf_config()
    hf_state = dict(_build_hf(cfg).state_dict())
    key_table = "encoder.relative_position_bias.relative_position_bias_table"
    key_index = "encoder.relative_position_bias.relative_position_index"
    bias_cls = transformers.models.data2vec.modeling_data2vec_vision.Data2VecVisionRelativePositionBias
    hf_table = torch.randn(hf_state[key_table].shape, generator=g)  # (E, heads)
    hf_state[key_table] = hf_table
    hf_state[key_index] = bias_cls.generate_relative_position_index((4, 4))
    assert torch.equal(from_hf_data2vec_vision(hf_state, depth=DEPTH)["adapter.rel_pos.table"], hf_table)
    relabel = torch.randperm(hf_table.shape[0], generator=g)
    hf_state[key_index] = relabel[relative_position_index((4, 4))]
    hf_state[key_table] = torch.empty_like(hf_table).index_copy_(0, relabel, hf_table)
    assert torch.equal(from_hf_data2vec_vision(hf_state, depth=DEPTH)["adapter.rel_pos.table"], hf_table)


def test_from_hf_rejects_bad_inputs() -> None:
    cfg = _hf_config()
    state = dict(_build_hf(cfg).state_dict())
    with pytest.raises(ValueError, match="depth"):
        from_hf_data2vec_vision(state, depth=DEPTH - 1)
    per_layer = dict(state)
    per_layer["encoder.layer.0.attention.attention.relative_position_bias.relative_position_bias_table"] = (
        torch.zeros(52, 4)
    )
    with pytest.raises(ValueError, match="per-layer"):
        from_hf_data2vec_vision(per_layer, depth=DEPTH)
    extra = dict(state)
    extra["encoder.layer.0.something_new"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unconverted"):
        from_hf_data2vec_vision(extra, depth=DEPTH)


@torch.no_grad()
def test_pre_ln_encoder_matches_timm_vit() -> None:
    """Our pre-LN encoder + learned positions == timm ``VisionTransformer.forward_features`` (no layer scale)."""
    vit_mod = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(10)
    timm_vit = vit_mod.VisionTransformer(
        img_size=28, patch_size=4, in_chans=1, embed_dim=48, depth=2, num_heads=3,
        class_token=True, global_pool="", qkv_bias=True, num_classes=0,
    ).eval()
    _perturb(timm_vit, seed=11)
    adapter = ImageAdapter(ImageAdapterConfig(image_size=28, patch_size=4, in_chans=1, positions="learned"),
                           dim=48, num_heads=3)
    encoder = TransformerEncoder(EncoderConfig(dim=48, depth=2, num_heads=3, mlp_ratio=4.0, qkv_bias=True,
                                               norm_eps=1e-6))
    ours = nn.ModuleDict({"adapter": adapter, "encoder": encoder}).eval()

    # timm key -> unimim key: blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.* keep their names
    mapped: dict[str, Tensor] = {}
    for key, value in timm_vit.state_dict().items():
        if key.startswith("blocks."):
            mapped["encoder." + key] = value
        elif key.startswith("norm."):
            mapped["encoder." + key] = value
        elif key.startswith("patch_embed.proj."):
            mapped["adapter.patch_embed." + key.removeprefix("patch_embed.proj.")] = value
        elif key in ("cls_token", "pos_embed"):
            mapped["adapter." + key] = value
        else:
            raise AssertionError(f"unmapped timm key {key}")
    mapped["adapter.mask_token"] = ours.state_dict()["adapter.mask_token"]
    ours.load_state_dict(mapped, strict=True)

    images = torch.randn(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(12))
    ref = timm_vit.forward_features(images)  # (B, 1 + 49, 48)
    x = ours["encoder"](ours["adapter"].embed(images)).x
    diff = (ref - x).abs().max().item()
    logger.info("timm ViT forward_features max abs diff %.3g", diff)
    assert diff < 1e-5
