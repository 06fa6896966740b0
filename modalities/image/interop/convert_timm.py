"""Load a timm ``VisionTransformer`` into the unimim image backbone (``{"adapter", "encoder"}``).

timm's ViT (``timm.models.vision_transformer.VisionTransformer``, Dosovitskiy et al. 2021; the encoder of MAE's
released models) has a fused qkv projection like unimim's, so most keys map one to one:

    cls_token, pos_embed (1, 1 + N, D)        -> adapter.cls_token, adapter.pos_embed (positions="learned"),
                                                  or checked against the fixed table (positions="sincos")
    patch_embed.proj.*                        -> adapter.patch_embed.*
    blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*  -> encoder.blocks.{i}.<same>.*
    blocks.{i}.ls1.gamma / ls2.gamma          -> encoder.blocks.{i}.ls1.gamma / ls2.gamma
    norm.*                                    -> encoder.norm.*
    head.*, fc_norm (identity)                -> dropped (classifier, not backbone)

Unsupported variants (register tokens, ``no_embed_class``, ``pre_norm``, q/k normalisation, attention pooling) are
refused with a clear error by :func:`timm_vit_config_to_unimim`; the adapter's mask token (timm has none) is zeros.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from modalities.image.interop.convert_hf import require_all_converted
from modalities.image.model.adapter import ImageAdapterConfig
from unimim.nn.encoder import EncoderConfig
from unimim.nn.pos_embed import sincos_2d

logger = logging.getLogger(__name__)

_BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def from_timm_vit(
    state: Mapping[str, Tensor], *, depth: int, positions: Literal["learned", "sincos"] = "learned"
) -> dict[str, Tensor]:
    """Map a timm ViT state dict (cls token, position embedding over cls + patches) to a unimim backbone state dict.

    ``positions="sincos"`` checks that ``pos_embed`` is the fixed 2-D sin-cos table with a zero cls row (MAE's
    encoders) and drops it (the adapter's table is a buffer). Returns a state dict for
    ``nn.ModuleDict({"adapter": ImageAdapter, "encoder": TransformerEncoder})`` that loads with ``strict=True``.
    """
    used: set[str] = set()
    out: dict[str, Tensor] = {}
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise KeyError(f"timm ViT state dict lacks {key!r}")
    out["adapter.cls_token"] = state["cls_token"]
    out["adapter.mask_token"] = torch.zeros_like(state["cls_token"])
    pos = state["pos_embed"]  # (1, 1 + N, D)
    if positions == "learned":
        out["adapter.pos_embed"] = pos
    else:
        dim, n = pos.shape[-1], pos.shape[1] - 1
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"pos_embed covers {n} patches, not a square grid")
        table = torch.cat([torch.zeros(1, dim), sincos_2d(dim, (side, side))]).unsqueeze(0)
        err = (pos.detach().float().cpu() - table).abs().max().item()
        if err > 1e-4:
            raise ValueError(f"pos_embed is not the fixed 2-D sin-cos table (max difference {err:.3g}); "
                             "load it with positions='learned'")
    used.update(("cls_token", "pos_embed"))
    for key in list(state):
        if key.startswith("patch_embed.proj."):
            out["adapter.patch_embed." + key[len("patch_embed.proj."):]] = state[key]
            used.add(key)
        elif key.startswith("norm."):
            out["encoder." + key] = state[key]
            used.add(key)
    found = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if found != set(range(depth)):
        raise ValueError(f"depth={depth} but the state dict has blocks {sorted(found)}")
    for i in range(depth):
        for name in _BLOCK_PARAMS:
            for p in ("weight", "bias"):
                key = f"blocks.{i}.{name}.{p}"
                if key in state:
                    out[f"encoder.{key}"] = state[key]
                    used.add(key)
                elif p == "weight" or name != "attn.qkv":
                    raise KeyError(f"timm ViT state dict lacks {key!r}")
        for g in ("ls1.gamma", "ls2.gamma"):
            key = f"blocks.{i}.{g}"
            if key in state:
                out[f"encoder.{key}"] = state[key]
                used.add(key)
    dropped = [k for k in state if k.startswith(("head.", "fc_norm."))]
    if dropped:
        logger.info("dropping %d classifier entries (%s ...)", len(dropped), dropped[0])
        used.update(dropped)
    require_all_converted(state, used, "timm")
    return out


def timm_vit_config_to_unimim(
    model: nn.Module, positions: Literal["learned", "sincos"] = "learned"
) -> tuple[ImageAdapterConfig, EncoderConfig]:
    """The unimim adapter / encoder settings equivalent to a built timm ``VisionTransformer``."""
    if getattr(model, "num_reg_tokens", 0):
        raise ValueError("register tokens are not supported")
    if getattr(model, "no_embed_class", False) or not getattr(model, "has_class_token", True):
        raise ValueError("timm ViT without a cls token or with no_embed_class is not supported")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("attention pooling heads are not supported")
    if not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity):
        raise ValueError("pre_norm (a LayerNorm before the blocks) is not supported")
    block = model.blocks[0]
    if not isinstance(block.attn.q_norm, nn.Identity):
        raise ValueError("qk_norm is not supported")
    if not isinstance(block.mlp.act, nn.GELU) or getattr(block.mlp.act, "approximate", "none") != "none":
        raise ValueError("only exact GELU MLPs are supported")
    img, patch = model.patch_embed.img_size, model.patch_embed.patch_size
    if img[0] != img[1] or patch[0] != patch[1]:
        raise ValueError(f"non-square images / patches {img} / {patch} are not supported")
    dim = int(model.embed_dim)
    hidden = int(block.mlp.fc1.out_features)
    scale = getattr(block.ls1, "gamma", None)
    adapter = ImageAdapterConfig(image_size=int(img[0]), patch_size=int(patch[0]),
                                 in_chans=int(model.patch_embed.proj.in_channels), positions=positions, cls_token=True)
    encoder = EncoderConfig(
        dim=dim, depth=len(model.blocks), num_heads=int(block.attn.num_heads), mlp_ratio=hidden / dim,
        qkv_bias=block.attn.qkv.bias is not None, norm_first=True, final_norm=not isinstance(model.norm, nn.Identity),
        layer_scale_init=float(scale.detach().mean()) if scale is not None else None,
        norm_eps=float(block.norm1.eps),
    )
    return adapter, encoder


def load_timm_vit(model: nn.Module, positions: Literal["learned", "sincos"] = "learned") -> nn.ModuleDict:
    """A unimim backbone with the weights of a timm ViT ``model`` (its config read from the model)."""
    from modalities.image.model.adapter import ImageAdapter
    from unimim.nn.encoder import TransformerEncoder

    adapter_cfg, encoder_cfg = timm_vit_config_to_unimim(model, positions)
    backbone = nn.ModuleDict({
        "adapter": ImageAdapter(adapter_cfg, dim=encoder_cfg.dim, num_heads=encoder_cfg.num_heads),
        "encoder": TransformerEncoder(encoder_cfg),
    })
    backbone.load_state_dict(from_timm_vit(model.state_dict(), depth=encoder_cfg.depth, positions=positions))
    return backbone



def from_timm_beit(state: Mapping[str, Tensor], *, depth: int) -> dict[str, Tensor]:
    """A timm ``Beit`` state dict with one shared relative position bias (``use_shared_rel_pos_bias``, what
    ``unimim export --to timm`` writes for relative positions) -> a unimim backbone state dict (no mask token: timm
    has none). Per-layer tables (``use_rel_pos_bias``) and absolute positions are refused."""
    if any(k.endswith("attn.relative_position_bias_table") for k in state):
        raise ValueError("timm Beit with per-layer relative position tables (use_rel_pos_bias) is not supported: "
                         "the unimim adapter holds one shared table")
    if "pos_embed" in state:
        raise ValueError("timm Beit with absolute positions (use_abs_pos_emb) does not fit adapter.positions: "
                         "relative")
    found = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if found != set(range(depth)):
        raise ValueError(f"depth={depth} but the state dict has blocks {sorted(found)}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "cls_token":
            out["adapter.cls_token"] = value
        elif key == "rel_pos_bias.relative_position_bias_table":
            out["adapter.rel_pos.table"] = value
        elif key.startswith("patch_embed.proj."):
            out["adapter.patch_embed." + key[len("patch_embed.proj."):]] = value
        elif key.startswith("norm."):
            out["encoder." + key] = value
        elif key.startswith("blocks."):
            out["encoder." + key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = value
        elif not key.startswith(("fc_norm.", "head.")):
            raise ValueError(f"timm Beit entry {key!r} has no unimim counterpart")
    return out
