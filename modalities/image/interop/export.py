"""What an image backbone exports as: the transformers class, its config and state dict, or the timm model.

``hf_export`` picks the class (``ViTModel`` for plain ViTs, ``Data2VecVisionModel`` / ``BeitModel`` for BEiT-style
encoders with relative position bias or layer scale, ``ViTMAEForPreTraining`` for MAE with its decoder) and
refuses, naming the setting, what a class cannot represent. ``timm_export`` gives timm's ``VisionTransformer``,
timm's ``Beit`` (one shared relative position bias) for relative positions, or, for SimMIM's Swin backbone, timm's
``SwinTransformer`` (:mod:`modalities.image.model.swin` wraps one). Fixed
sin-cos positions are exported as the learned table that reproduces them (:func:`materialise_positions`).
Nothing here imports ``transformers``: the caller builds the model from ``(class name, config kwargs)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from modalities.export_checks import pick_hf_class
from modalities.image.interop.convert_hf import to_hf_data2vec_vision
from modalities.image.interop.convert_hf_vit import materialise_positions, to_hf_vit_layout, to_hf_vit_mae

VIT, D2V, BEIT, MAE = "ViTModel", "Data2VecVisionModel", "BeitModel", "ViTMAEForPreTraining"
HF_CLASSES = (VIT, D2V, BEIT, MAE)
_CONFIGS = {VIT: "ViTConfig", D2V: "Data2VecVisionConfig", BEIT: "BeitConfig", MAE: "ViTMAEConfig"}


def _refuse(what: str, setting: str, hint: str = "") -> None:
    raise ValueError(f"{setting} has no {what} equivalent{': ' + hint if hint else ''}")


def default_hf_class(cfg: Any) -> str:
    """The class a run exports as unless asked otherwise: BEiT-style encoders (relative position bias or layer
    scale) as ``BeitModel`` for the BEiT objective and ``Data2VecVisionModel`` otherwise, plain ViTs as ``ViTModel``."""
    if cfg.adapter.positions == "relative" or cfg.encoder.layer_scale_init:
        return BEIT if cfg.objective == "beit" else D2V
    return VIT


def _common(cfg: Any, hf_class: str) -> dict[str, Any]:
    """Checks every HF ViT-family class shares, and the config keywords they share."""
    a, e = cfg.adapter, cfg.encoder
    if not e.norm_first:
        _refuse(hf_class, "encoder.norm_first: false (post-LN blocks)", f"{hf_class} is pre-LN")
    if a.input_norm:
        _refuse(hf_class, "adapter.input_norm: true (a LayerNorm over the embeddings before the first block)",
                "export with --to timm (pre_norm)")
    if not a.cls_token:
        _refuse(hf_class, "adapter.cls_token: false", f"{hf_class} always has a cls token (use --to timm)")
    return dict(image_size=a.image_size, patch_size=a.patch_size, num_channels=a.in_chans, hidden_size=e.dim,
                num_hidden_layers=e.depth, num_attention_heads=e.num_heads, intermediate_size=int(e.dim * e.mlp_ratio),
                hidden_act="gelu", layer_norm_eps=e.norm_eps, hidden_dropout_prob=e.dropout,
                attention_probs_dropout_prob=e.attn_dropout, initializer_range=e.init_std)


def hf_export(objective: nn.Module, backbone: nn.ModuleDict, cfg: Any,
              hf_class: str | None = None) -> tuple[str, str, dict[str, Any], dict[str, Tensor]]:
    """(class name, config class name, config kwargs, state dict) of ``backbone`` (``{"adapter", "encoder"}``, the
    one ``encode`` uses) as a transformers model; ``ValueError`` naming the setting where the class cannot
    represent it. ``objective`` is only read for MAE's decoder."""
    hf_class = pick_hf_class(hf_class, default_hf_class(cfg), HF_CLASSES, "image")
    if "encoder" not in backbone:
        _refuse(hf_class, f"method.backbone: {getattr(cfg.method, 'backbone', '?')} (a Swin backbone)",
                "export it with --to timm")
    kwargs = _common(cfg, hf_class)
    e, a = cfg.encoder, cfg.adapter
    state = materialise_positions(backbone["adapter"], dict(backbone.state_dict()))
    if hf_class in (VIT, MAE):
        if e.layer_scale_init:
            _refuse(hf_class, f"encoder.layer_scale_init: {e.layer_scale_init}", f"export as {D2V} or {BEIT}")
        if a.positions == "relative":
            _refuse(hf_class, "adapter.positions: relative", f"export as {D2V} or {BEIT}")
        if not e.final_norm:
            _refuse(hf_class, "encoder.final_norm: false", f"{hf_class} always ends with a LayerNorm")
        kwargs["qkv_bias"] = e.qkv_bias is not False
        if hf_class == VIT:
            return VIT, _CONFIGS[VIT], kwargs, to_hf_vit_layout(state, depth=e.depth)
        if cfg.objective != "mae":
            raise ValueError(f"{MAE} carries MAE's decoder; objective {cfg.objective!r} has none (export as {VIT})")
        d = cfg.method.decoder
        if d.norm_eps != e.norm_eps:
            _refuse(MAE, f"method.decoder.norm_eps: {d.norm_eps} != encoder.norm_eps: {e.norm_eps}",
                    "one layer_norm_eps serves encoder and decoder")
        if not kwargs["qkv_bias"]:
            _refuse(MAE, "encoder.qkv_bias: false", "its qkv_bias serves the decoder too, which has biases")
        kwargs.update(decoder_hidden_size=d.dim, decoder_num_hidden_layers=d.depth,
                      decoder_num_attention_heads=d.num_heads, decoder_intermediate_size=int(d.dim * d.mlp_ratio),
                      mask_ratio=float(cfg.masking.ratio), norm_pix_loss=bool(cfg.method.norm_pix_loss))
        full = {f"backbone.{k}": v for k, v in state.items()}
        full.update({k: v for k, v in objective.state_dict().items() if k.startswith("decoder.")})
        hf_state = to_hf_vit_mae(full, depth=e.depth, decoder_depth=d.depth,
                                 decoder_pos_embed=objective.decoder.pos_table)
        return MAE, _CONFIGS[MAE], kwargs, hf_state
    relative = a.positions == "relative"
    kwargs.update(use_mask_token=True, use_absolute_position_embeddings=not relative,
                  use_shared_relative_position_bias=relative, use_relative_position_bias=False,
                  layer_scale_init_value=float(e.layer_scale_init or 0.0), use_mean_pooling=not e.final_norm,
                  drop_path_rate=e.drop_path)
    if hf_class == D2V:
        return D2V, _CONFIGS[D2V], kwargs, to_hf_data2vec_vision(state, depth=e.depth)
    return BEIT, _CONFIGS[BEIT], kwargs, to_hf_vit_layout(state, depth=e.depth, key_bias=False, mask_token=True)


def timm_export(backbone: nn.ModuleDict, cfg: Any) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """(``timm.create_model`` name, its kwargs, state dict) of ``backbone``: timm's ``VisionTransformer`` for an
    adapter + encoder, timm's ``SwinTransformer`` for SimMIM's Swin. ``ValueError`` naming what timm cannot take."""
    if "swin" in backbone:
        swin = backbone["swin"]
        s = swin.cfg
        kwargs = dict(img_size=cfg.adapter.image_size, patch_size=cfg.adapter.patch_size,
                      in_chans=cfg.adapter.in_chans, embed_dim=s.embed_dim, depths=list(s.depths),
                      num_heads=list(s.num_heads), window_size=s.window_size, mlp_ratio=s.mlp_ratio, num_classes=0,
                      drop_path_rate=s.drop_path)
        return "swin_base_patch4_window7_224", kwargs, dict(swin.model.state_dict())
    a, e = cfg.adapter, cfg.encoder
    if a.positions == "relative":
        return _timm_beit(backbone, cfg)
    if not e.norm_first:
        _refuse("timm VisionTransformer", "encoder.norm_first: false (post-LN blocks)")
    if e.norm_eps != 1e-6:
        _refuse("timm VisionTransformer", f"encoder.norm_eps: {e.norm_eps}", "timm's ViT LayerNorms use eps 1e-6")
    state = materialise_positions(backbone["adapter"], dict(backbone.state_dict()))
    out: dict[str, Tensor] = {"pos_embed": state.pop("adapter.pos_embed")}
    state.pop("adapter.mask_token")
    if a.cls_token:
        out["cls_token"] = state.pop("adapter.cls_token")
    out["patch_embed.proj.weight"] = state.pop("adapter.patch_embed.weight")
    bias = state.pop("adapter.patch_embed.bias")  # (D,)
    if a.input_norm:  # timm's pre_norm ViT has no patch bias: a constant on every patch token, folded into positions
        prefix = int(a.cls_token)
        out["pos_embed"] = out["pos_embed"].clone()
        out["pos_embed"][:, prefix:] += bias
        for p in ("weight", "bias"):
            out[f"norm_pre.{p}"] = state.pop(f"adapter.norm.{p}")
    else:
        out["patch_embed.proj.bias"] = bias
    for key in list(state):
        if key.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        if key.startswith("encoder."):
            out[key[len("encoder."):]] = state.pop(key)
    for i in range(e.depth):  # q / v-only biases: timm's fused qkv bias with a zero key part (the same function)
        q = state.pop(f"encoder.blocks.{i}.attn.q_bias", None)
        v = state.pop(f"encoder.blocks.{i}.attn.v_bias", None)
        if q is not None:
            out[f"blocks.{i}.attn.qkv.bias"] = q.new_zeros(3 * q.shape[0])
            out[f"blocks.{i}.attn.qkv.bias"][: q.shape[0]] = q
            out[f"blocks.{i}.attn.qkv.bias"][2 * q.shape[0]:] = v
    if state:
        raise ValueError(f"unimim entries with no timm VisionTransformer counterpart: {sorted(state)[:8]}")
    kwargs = dict(img_size=a.image_size, patch_size=a.patch_size, in_chans=a.in_chans, embed_dim=e.dim,
                  depth=e.depth, num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, qkv_bias=e.qkv_bias is not False,
                  init_values=e.layer_scale_init, class_token=a.cls_token, global_pool="token" if a.cls_token
                  else "avg", pre_norm=a.input_norm, final_norm=e.final_norm, fc_norm=False, num_classes=0,
                  drop_rate=e.dropout, attn_drop_rate=e.attn_dropout, drop_path_rate=e.drop_path)
    return "vit_base_patch16_224", kwargs, out


def _timm_beit(backbone: nn.ModuleDict, cfg: Any) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """A BEiT-style backbone (shared relative position bias) as timm's ``Beit`` (``use_shared_rel_pos_bias``; its
    index layout is BEiT's, the one :mod:`modalities.image.model.relative_position` builds)."""
    a, e = cfg.adapter, cfg.encoder
    what = "timm Beit"
    if not e.norm_first:
        _refuse(what, "encoder.norm_first: false (post-LN blocks)")
    if a.input_norm:
        _refuse(what, "adapter.input_norm: true (a LayerNorm over the embeddings before the first block)")
    if e.norm_eps != 1e-6:
        _refuse(what, f"encoder.norm_eps: {e.norm_eps}", "timm's Beit LayerNorms use eps 1e-6")
    state = dict(backbone.state_dict())
    state.pop("adapter.mask_token")
    out: dict[str, Tensor] = {"cls_token": state.pop("adapter.cls_token"),
                              "rel_pos_bias.relative_position_bias_table": state.pop("adapter.rel_pos.table")}
    for p in ("weight", "bias"):
        out[f"patch_embed.proj.{p}"] = state.pop(f"adapter.patch_embed.{p}")
        if e.final_norm:
            out[f"norm.{p}"] = state.pop(f"encoder.norm.{p}")
    if not e.final_norm:  # timm then pools through a fresh fc_norm, which forward_features does not use
        dim = out["cls_token"].shape[-1]
        out["fc_norm.weight"], out["fc_norm.bias"] = torch.ones(dim), torch.zeros(dim)
    renames = {"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2", "attn.q_bias": "attn.q_bias",
               "attn.v_bias": "attn.v_bias", "attn.qkv.weight": "attn.qkv.weight"}
    for key in list(state):
        block, _, rest = key.partition(".blocks.")[2].partition(".")
        if not key.startswith("encoder.blocks."):
            continue
        value = state.pop(key)
        if rest == "attn.qkv.bias":  # q / k / v biases: timm's Beit has q and v; the key bias cancels in the softmax
            q, _, v = value.chunk(3)
            out[f"blocks.{block}.attn.q_bias"], out[f"blocks.{block}.attn.v_bias"] = q, v
        else:
            out[f"blocks.{block}.{renames.get(rest, rest)}"] = value
    if state:
        raise ValueError(f"unimim entries with no timm Beit counterpart: {sorted(state)[:8]}")
    kwargs = dict(img_size=a.image_size, patch_size=a.patch_size, in_chans=a.in_chans, embed_dim=e.dim,
                  depth=e.depth, num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, qkv_bias=e.qkv_bias is not False,
                  init_values=e.layer_scale_init, use_abs_pos_emb=False, use_rel_pos_bias=False,
                  use_shared_rel_pos_bias=True, num_classes=0, global_pool="token" if e.final_norm else "avg",
                  drop_rate=e.dropout, attn_drop_rate=e.attn_dropout, drop_path_rate=e.drop_path)
    return "beit_base_patch16_224", kwargs, out
