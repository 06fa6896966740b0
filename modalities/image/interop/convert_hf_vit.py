"""Convert between the unimim image backbone and the transformers 5 ``ViTModel`` / ``BeitModel`` /
``ViTMAEForPreTraining`` layouts (separate q / k / v projections, ``layers.{i}`` naming).

``ViTModel`` is the plain ViT (Dosovitskiy et al. 2021): pre-LN blocks, learned absolute positions over cls +
patches, a final LayerNorm, biases on all of q / k / v or none. ``BeitModel`` (Bao et al. 2021) has BEiT's
attention (biases on q and v only), optional layer scale ``lambda_1`` / ``lambda_2`` and either absolute
positions or one shared relative position bias table (the layout of
:func:`modalities.image.model.relative_position.relative_position_index`, copied unchanged; see
:mod:`modalities.image.interop.convert_hf_beit`). Key map (``{i}`` = block index; ``hf`` = the model's prefix,
``""`` for ``ViTModel`` / ``BeitModel``, ``"vit."`` inside ``ViTMAEForPreTraining``)::

    adapter.cls_token / mask_token (1, 1, D)       <-> {hf}embeddings.cls_token / mask_token
    adapter.patch_embed.{weight,bias}              <-> {hf}embeddings.patch_embeddings.projection.{weight,bias}
    adapter.pos_embed (1, 1 + N, D)                <-> {hf}embeddings.position_embeddings
    adapter.rel_pos.table                          <-> shared_position_bias.relative_position_bias_table (BEiT)
    encoder.blocks.{i}.attn.qkv.weight (3D, D)     <-> {hf}layers.{i}.attention.{q,k,v}_proj.weight
    encoder.blocks.{i}.attn.qkv.bias / q_bias, v_bias <-> {hf}layers.{i}.attention.{q,k,v}_proj.bias
    encoder.blocks.{i}.attn.proj                   <-> {hf}layers.{i}.attention.o_proj
    encoder.blocks.{i}.norm1 / norm2               <-> {hf}layers.{i}.layernorm_before / layernorm_after
    encoder.blocks.{i}.mlp.fc1 / fc2               <-> {hf}layers.{i}.mlp.fc1 / fc2
    encoder.blocks.{i}.ls1.gamma / ls2.gamma       <-> layers.{i}.lambda_1 / lambda_2 (BEiT)
    encoder.norm                                   <-> {hf}layernorm

Fixed sin-cos positions are not part of a state dict; the caller puts the adapter's table in as
``adapter.pos_embed`` (:func:`materialise_positions`), and the exported model then carries it as an (exactly
equivalent) learned table. A q / v-only bias (``qkv_bias: qv``) exports to ``ViTModel`` with a zero key bias,
exactly; a full q / k / v bias exports to ``BeitModel`` without its key part, which adds the same q.b_k to every
logit of a query row and cancels in the softmax. This module needs no ``transformers`` import.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from modalities.image.interop.convert_hf import check_depth, require_all_converted

logger = logging.getLogger(__name__)

_EMBED = {  # unimim -> HF, relative to the model prefix
    "adapter.cls_token": "embeddings.cls_token",
    "adapter.mask_token": "embeddings.mask_token",
    "adapter.patch_embed.weight": "embeddings.patch_embeddings.projection.weight",
    "adapter.patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
    "adapter.pos_embed": "embeddings.position_embeddings",
    "adapter.rel_pos.table": "shared_position_bias.relative_position_bias_table",
    "encoder.norm.weight": "layernorm.weight",
    "encoder.norm.bias": "layernorm.bias",
}
_LAYER = {  # unimim block suffix -> HF layer suffix
    "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "ls1.gamma": "lambda_1", "ls2.gamma": "lambda_2",
}
_OPTIONAL_LAYER = ("ls1.gamma", "ls2.gamma")


def materialise_positions(adapter: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add the adapter's fixed sin-cos table (1, P + N, D) as ``adapter.pos_embed`` when it has no learned one and
    no relative bias: the learned table that reproduces it exactly. Returns ``state`` (changed in place)."""
    if getattr(adapter, "pos_embed", None) is None and getattr(adapter, "rel_pos", None) is None:
        state["adapter.pos_embed"] = adapter.pos_table.detach().clone()  # (1, P + N, D)
    return state


def _qkv_to_hf(src: Mapping[str, Tensor], ours: str, hf: str, *, key_bias: bool, used: set[str]) -> dict[str, Tensor]:
    """One block's fused qkv -> q / k / v projections; ``key_bias`` False leaves out the key bias (BEiT)."""
    out: dict[str, Tensor] = {}
    weight = src[ours + "attn.qkv.weight"]  # (3D, D)
    used.add(ours + "attn.qkv.weight")
    for name, part in zip("qkv", weight.chunk(3, dim=0)):  # 3 x (D, D)
        out[f"{hf}attention.{name}_proj.weight"] = part.clone()
    if ours + "attn.qkv.bias" in src:
        q, k, v = (b.clone() for b in src[ours + "attn.qkv.bias"].chunk(3))  # 3 x (D,)
        used.add(ours + "attn.qkv.bias")
    elif ours + "attn.q_bias" in src:
        q, v = src[ours + "attn.q_bias"].clone(), src[ours + "attn.v_bias"].clone()
        k = torch.zeros_like(q)  # BEiT's attention has no key bias: zero is the same function
        used.update((ours + "attn.q_bias", ours + "attn.v_bias"))
    else:
        return out
    if not key_bias and k.abs().max() > 0:
        logger.info("%s: dropping the key bias (the softmax cancels it)", ours)
    out[f"{hf}attention.q_proj.bias"] = q
    out[f"{hf}attention.v_proj.bias"] = v
    if key_bias:
        out[f"{hf}attention.k_proj.bias"] = k
    return out


def to_hf_vit_layout(state: Mapping[str, Tensor], *, depth: int, prefix: str = "", key_bias: bool = True,
                     mask_token: bool = False) -> dict[str, Tensor]:
    """A unimim backbone state dict (``adapter.*``, ``encoder.*``; positions materialised) -> the 5.x ViT / BEiT
    layout under ``prefix``. ``key_bias``: emit ``k_proj.bias`` (ViT) or not (BEiT); ``mask_token``: emit
    ``embeddings.mask_token`` (BEiT, ``ViTModel(use_mask_token=True)``). Raises on any unconverted entry."""
    check_depth(set(state), "encoder.blocks.", depth)
    used: set[str] = set()
    out: dict[str, Tensor] = {}
    for ours, hf in _EMBED.items():
        if ours in state:
            used.add(ours)
            if ours == "adapter.mask_token" and not mask_token:
                continue
            out[prefix + hf] = state[ours]
    for i in range(depth):
        ours, hf = f"encoder.blocks.{i}.", f"{prefix}layers.{i}."
        out.update(_qkv_to_hf(state, ours, hf, key_bias=key_bias, used=used))
        for src, dst in _LAYER.items():
            if ours + src in state:
                out[hf + dst] = state[ours + src]
                used.add(ours + src)
            elif src not in _OPTIONAL_LAYER:
                raise KeyError(f"state dict lacks {ours + src!r}")
    require_all_converted(state, used, "unimim")
    return out


def from_hf_vit_layout(hf_state: Mapping[str, Tensor], *, depth: int, prefix: str = "") -> dict[str, Tensor]:
    """The inverse of :func:`to_hf_vit_layout` (``ViTModel`` / ``BeitModel`` state dicts, ``pooler.*`` dropped): a
    unimim backbone state dict. q / k / v biases become ``attn.qkv.bias``, q / v biases ``attn.q_bias`` /
    ``attn.v_bias``; a missing mask token becomes zeros (1, 1, D)."""
    state = {k[len(prefix):]: v for k, v in hf_state.items() if k.startswith(prefix)}
    inverse = {v: k for k, v in _EMBED.items()}
    inverse_layer = {v: k for k, v in _LAYER.items()}
    check_depth(set(state), "layers.", depth)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for hf, ours in inverse.items():
        if hf in state:
            out[ours] = state[hf]
            used.add(hf)
    if "adapter.cls_token" not in out:
        raise KeyError(f"the HF state dict lacks {prefix}embeddings.cls_token")
    if "adapter.mask_token" not in out:
        out["adapter.mask_token"] = torch.zeros_like(out["adapter.cls_token"])
    for i in range(depth):
        hf, ours = f"layers.{i}.", f"encoder.blocks.{i}."
        out[ours + "attn.qkv.weight"] = torch.cat([state[f"{hf}attention.{n}_proj.weight"] for n in "qkv"])  # (3D,D)
        biases = {n: state.get(f"{hf}attention.{n}_proj.bias") for n in "qkv"}
        if all(b is not None for b in biases.values()):
            out[ours + "attn.qkv.bias"] = torch.cat([biases["q"], biases["k"], biases["v"]])  # (3D,)
        elif biases["q"] is not None and biases["v"] is not None:
            out[ours + "attn.q_bias"], out[ours + "attn.v_bias"] = biases["q"], biases["v"]
        used.update(f"{hf}attention.{n}_proj.{p}" for n in "qkv" for p in ("weight", "bias"))
        for src, dst in inverse_layer.items():
            if hf + src in state:
                out[ours + dst] = state[hf + src]
                used.add(hf + src)
    used.update(k for k in state if k.startswith("pooler.") or k.endswith("relative_position_index"))
    require_all_converted(state, used, "HF")
    return out


def to_hf_vit_mae(state: Mapping[str, Tensor], *, depth: int, decoder_depth: int,
                  decoder_pos_embed: Tensor) -> dict[str, Tensor]:
    """A unimim MAE objective state dict (``backbone.*`` with materialised positions, ``decoder.*``) ->
    ``ViTMAEForPreTraining`` state dict. ``decoder_pos_embed`` (1, 1 + N, d) is the decoder's fixed table."""
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    out = to_hf_vit_layout(backbone, depth=depth, prefix="vit.")
    dec = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    left = sorted(k for k in state if not k.startswith(("backbone.", "decoder.")))
    if left:
        raise ValueError(f"MAE entries with no ViTMAEForPreTraining counterpart: {left[:8]}")
    used: set[str] = set()
    for ours, hf in (("embed", "decoder_embed"), ("pred", "decoder_pred"), ("blocks.norm", "decoder_norm")):
        for p in ("weight", "bias"):
            out[f"decoder.{hf}.{p}"] = dec[f"{ours}.{p}"]
            used.add(f"{ours}.{p}")
    out["decoder.mask_token"] = dec["mask_token"]
    out["decoder.decoder_pos_embed"] = decoder_pos_embed.detach().clone()
    used.add("mask_token")
    blocks = {k[len("blocks."):]: v for k, v in dec.items() if k.startswith("blocks.blocks.")}
    layers = to_hf_vit_layout({f"encoder.{k}": v for k, v in blocks.items()}, depth=decoder_depth)
    out.update({f"decoder.decoder_{k}": v for k, v in layers.items()})
    used.update(k for k in dec if k.startswith("blocks.blocks."))
    require_all_converted(dec, used, "MAE decoder")
    return out
