"""Load ``transformers`` ``ViTMAEForPreTraining`` weights into the unimim MAE objective.

The HF model (``transformers.models.vit_mae``) is MAE (He et al. 2022) with separate q / k / v projections. The
unimim side is :class:`modalities.image.objectives.mae.MAE` with an ``ImageAdapter(positions="sincos",
cls_token=True)``. Key map (``{i}`` = layer index; transformers 5 names, 4.x names in brackets):

    vit.embeddings.cls_token                           -> backbone.adapter.cls_token
    vit.embeddings.patch_embeddings.projection.*       -> backbone.adapter.patch_embed.*
    vit.embeddings.position_embeddings (fixed sin-cos) -> checked against the adapter's table, not stored
    vit.layers.{i}.attention.{q,k,v}_proj.*  [vit.encoder.layer.{i}.attention.attention.{query,key,value}.*]
                                                       -> backbone.encoder.blocks.{i}.attn.qkv.* (q; k; v)
    vit.layers.{i}.attention.o_proj.*        [...attention.output.dense.*]  -> ....attn.proj.*
    vit.layers.{i}.layernorm_before / layernorm_after  -> ....norm1 / norm2
    vit.layers.{i}.mlp.fc1 / fc2             [...intermediate.dense / output.dense]  -> ....mlp.fc1 / fc2
    vit.layernorm.*                                    -> backbone.encoder.norm.*
    decoder.decoder_embed / decoder_pred / mask_token  -> decoder.embed / decoder.pred / decoder.mask_token
    decoder.decoder_layers.{i}.*  [decoder.decoder_layers.{i}.* in 4.x naming]  -> decoder.blocks.blocks.{i}.*
    decoder.decoder_norm.*                             -> decoder.blocks.norm.*
    decoder.decoder_pos_embed (fixed sin-cos)          -> checked against the decoder's table, not stored

The adapter's own mask token (used by full-sequence objectives, not by MAE) becomes zeros. This module needs no
``transformers`` import; :func:`hf_mae_config_to_unimim` reads the config's attributes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from modalities.image.interop.convert_hf import check_depth, require_all_converted, square
from modalities.image.masking import ImageMaskConfig
from modalities.image.model.adapter import ImageAdapterConfig
from modalities.image.model.mae_decoder import MAEDecoderConfig
from modalities.image.objectives.mae import MAEConfig
from unimim.nn.encoder import EncoderConfig
from unimim.nn.pos_embed import sincos_2d

logger = logging.getLogger(__name__)

_V4_RENAMES = [  # transformers 4.x layer names -> transformers 5 names
    (re.compile(r"^vit\.encoder\.layer\.(\d+)\."), r"vit.layers.\1."),
    (re.compile(r"\.attention\.attention\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.attention\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.attention\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
    (re.compile(r"\.intermediate\.dense\."), ".mlp.fc1."),
    (re.compile(r"\.output\.dense\."), ".mlp.fc2."),
]
_BLOCK_RENAMES = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}


def _modern_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in _V4_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _check_sincos(table: Tensor, grid: tuple[int, int], name: str) -> None:
    """table (1, 1 + N, D): zero cls row + the fixed 2-D sin-cos table of ``grid``, else ValueError."""
    dim = table.shape[-1]
    expected = torch.cat([torch.zeros(1, dim), sincos_2d(dim, grid)]).unsqueeze(0)  # (1, 1 + N, D)
    if table.shape != expected.shape:
        raise ValueError(f"{name} has shape {tuple(table.shape)}, expected {tuple(expected.shape)} for grid {grid}")
    err = (table.detach().float().cpu() - expected).abs().max().item()
    if err > 1e-4:
        raise ValueError(f"{name} is not the fixed 2-D sin-cos table of MAE (max difference {err:.3g}); "
                         "learned or interpolated position embeddings cannot be loaded into positions='sincos'")


def _convert_layer(state: dict[str, Tensor], src: str, dst: str, used: set[str]) -> dict[str, Tensor]:
    out = {}
    for hf_name, ours in _BLOCK_RENAMES.items():
        for p in ("weight", "bias"):
            key = f"{src}{hf_name}.{p}"
            if key not in state:
                raise KeyError(f"ViTMAE state dict lacks {key!r}")
            out[f"{dst}{ours}.{p}"] = state[key]
            used.add(key)
    for p in ("weight", "bias"):
        parts = [f"{src}attention.{n}_proj.{p}" for n in "qkv"]
        present = [k in state for k in parts]
        if not any(present) and p == "bias":
            continue
        if not all(present):
            raise KeyError(f"ViTMAE state dict lacks some of {parts}")
        out[f"{dst}attn.qkv.{p}"] = torch.cat([state[k] for k in parts], dim=0)  # 3 x (D, ...) -> (3D, ...)
        used.update(parts)
    return out


def from_hf_vit_mae(
    hf_state: Mapping[str, Tensor], *, depth: int, decoder_depth: int, grid: tuple[int, int]
) -> dict[str, Tensor]:
    """Map a ``ViTMAEForPreTraining`` state dict to a state dict of the unimim :class:`MAE` objective.

    Args:
        hf_state: the HF state dict (transformers 5 or 4.x names). Shapes: q/k/v/o (D, D), fc1 (F, D), fc2 (D, F),
            position_embeddings (1, 1 + N, D), decoder_pos_embed (1, 1 + N, d), decoder_pred (p*p*C, d).
        depth / decoder_depth: encoder and decoder layer counts; every layer must be present.
        grid: patch grid (H, W), used to check that the position tables are MAE's fixed sin-cos tables.

    Returns:
        A state dict that loads with ``strict=True`` into ``MAE`` built from :func:`hf_mae_config_to_unimim`.
    """
    state = _modern_names(hf_state)
    used: set[str] = set()
    out: dict[str, Tensor] = {}

    def take(src: str, dst: str) -> None:
        if src not in state:
            raise KeyError(f"ViTMAE state dict lacks {src!r}")
        out[dst] = state[src]
        used.add(src)

    take("vit.embeddings.cls_token", "backbone.adapter.cls_token")
    for p in ("weight", "bias"):
        take(f"vit.embeddings.patch_embeddings.projection.{p}", f"backbone.adapter.patch_embed.{p}")
        take(f"vit.layernorm.{p}", f"backbone.encoder.norm.{p}")
        take(f"decoder.decoder_embed.{p}", f"decoder.embed.{p}")
        take(f"decoder.decoder_norm.{p}", f"decoder.blocks.norm.{p}")
        take(f"decoder.decoder_pred.{p}", f"decoder.pred.{p}")
    take("decoder.mask_token", "decoder.mask_token")
    out["backbone.adapter.mask_token"] = torch.zeros_like(out["backbone.adapter.cls_token"])
    for key in ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"):
        if key not in state:
            raise KeyError(f"ViTMAE state dict lacks {key!r}")
        _check_sincos(state[key], grid, key)
        used.add(key)
    check_depth(set(state), "vit.layers.", depth)
    check_depth(set(state), "decoder.decoder_layers.", decoder_depth)
    for i in range(depth):
        out.update(_convert_layer(state, f"vit.layers.{i}.", f"backbone.encoder.blocks.{i}.", used))
    for i in range(decoder_depth):
        out.update(_convert_layer(state, f"decoder.decoder_layers.{i}.", f"decoder.blocks.blocks.{i}.", used))
    require_all_converted(state, used, "ViTMAE")
    return out


def hf_mae_config_to_unimim(hf_config: Any) -> tuple[ImageAdapterConfig, EncoderConfig, MAEConfig, ImageMaskConfig]:
    """The unimim adapter / encoder / MAE / mask settings equivalent to a ``ViTMAEConfig``."""
    if hf_config.hidden_act != "gelu":
        raise ValueError(f"hidden_act={hf_config.hidden_act!r}: unimim's Mlp uses exact (erf) GELU ('gelu')")
    if not hf_config.qkv_bias:
        raise ValueError("qkv_bias=False is not supported: the MAE decoder here always has q/k/v biases")
    dim, hidden = int(hf_config.hidden_size), int(hf_config.intermediate_size)
    ddim, dhidden = int(hf_config.decoder_hidden_size), int(hf_config.decoder_intermediate_size)
    for d, h, what in ((dim, hidden, "intermediate_size"), (ddim, dhidden, "decoder_intermediate_size")):
        if int(d * (h / d)) != h:
            raise ValueError(f"{what}={h} is not reproduced by int(width * ratio)")
    eps = float(hf_config.layer_norm_eps)
    adapter = ImageAdapterConfig(
        image_size=square(hf_config.image_size, "image_size"), patch_size=square(hf_config.patch_size, "patch_size"),
        in_chans=int(hf_config.num_channels), positions="sincos", cls_token=True,
    )
    encoder = EncoderConfig(
        dim=dim, depth=int(hf_config.num_hidden_layers), num_heads=int(hf_config.num_attention_heads),
        mlp_ratio=hidden / dim, qkv_bias=True, norm_first=True, final_norm=True,
        dropout=float(hf_config.hidden_dropout_prob), attn_dropout=float(hf_config.attention_probs_dropout_prob),
        norm_eps=eps, init_std=float(hf_config.initializer_range),
    )
    method = MAEConfig(
        decoder=MAEDecoderConfig(dim=ddim, depth=int(hf_config.decoder_num_hidden_layers),
                                 num_heads=int(hf_config.decoder_num_attention_heads), mlp_ratio=dhidden / ddim,
                                 norm_eps=eps),
        norm_pix_loss=bool(hf_config.norm_pix_loss),
    )
    masking = ImageMaskConfig(kind="random", ratio=float(hf_config.mask_ratio))
    return adapter, encoder, method, masking
