"""Load a Hugging Face ``transformers.BeitForMaskedImageModeling`` state dict into the unimim BEiT objective.

``BeitForMaskedImageModeling`` = ``beit`` (a ``BeitModel`` with a mask token) + ``layernorm`` + ``lm_head``
(Linear(D, vocab)); its logits are ``lm_head(layernorm(beit(x, bool_masked_pos))[:, 1:])``, the BEiT pre-training
head (Bao et al. 2021, §2.3). Key map for the pinned transformers (5.x layout; ``{i}`` = layer index):

    beit.embeddings.cls_token / mask_token (1, 1, D)           -> backbone.adapter.cls_token / mask_token
    beit.embeddings.patch_embeddings.projection.{weight,bias}  -> backbone.adapter.patch_embed.{weight,bias}
    beit.embeddings.position_embeddings (1, T, D)              -> backbone.adapter.pos_embed       (absolute)
    beit.shared_position_bias.relative_position_bias_table     -> backbone.adapter.rel_pos.table   (shared)
    beit.layers.{i}.attention.{q,k,v}_proj.weight              -> backbone.encoder.blocks.{i}.attn.qkv.weight (q; k; v)
    beit.layers.{i}.attention.{q,v}_proj.bias                  -> backbone.encoder.blocks.{i}.attn.{q,v}_bias
    beit.layers.{i}.attention.o_proj                           -> backbone.encoder.blocks.{i}.attn.proj
    beit.layers.{i}.layernorm_before / layernorm_after         -> backbone.encoder.blocks.{i}.norm1 / norm2
    beit.layers.{i}.mlp.fc1 / fc2                              -> backbone.encoder.blocks.{i}.mlp.fc1 / fc2
    beit.layers.{i}.lambda_1 / lambda_2 (D,)                   -> backbone.encoder.blocks.{i}.ls1.gamma / ls2.gamma
    layernorm.{weight,bias}                                    -> backbone.encoder.norm.{weight,bias}
    lm_head.{weight,bias}                                      -> head.{weight,bias}

HF's relative position index ((dy + H - 1)(2W - 1) + dx + W - 1 for patch pairs, then cls->patch, patch->cls,
cls->cls) is the layout of
:func:`modalities.image.model.relative_position.relative_position_index`, so the table is copied
unchanged. The HF config must use ``use_mean_pooling=True`` (the default): otherwise ``beit.layernorm`` and the MIM
``layernorm`` normalise twice, which the unimim encoder does not. This module needs no ``transformers`` import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from modalities.image.interop.convert_hf import check_depth, hf_config_to_unimim, require_all_converted
from modalities.image.model.adapter import ImageAdapterConfig
from unimim.nn.encoder import EncoderConfig

_EMBED = {
    "beit.embeddings.cls_token": "backbone.adapter.cls_token",
    "beit.embeddings.mask_token": "backbone.adapter.mask_token",
    "beit.embeddings.patch_embeddings.projection.weight": "backbone.adapter.patch_embed.weight",
    "beit.embeddings.patch_embeddings.projection.bias": "backbone.adapter.patch_embed.bias",
    "beit.embeddings.position_embeddings": "backbone.adapter.pos_embed",
    "beit.shared_position_bias.relative_position_bias_table": "backbone.adapter.rel_pos.table",
    "layernorm.weight": "backbone.encoder.norm.weight",
    "layernorm.bias": "backbone.encoder.norm.bias",
    "lm_head.weight": "head.weight",
    "lm_head.bias": "head.bias",
}
_LAYER = {
    "attention.q_proj.bias": "attn.q_bias",
    "attention.v_proj.bias": "attn.v_bias",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "lambda_1": "ls1.gamma",
    "lambda_2": "ls2.gamma",
}
_OPTIONAL = {"beit.embeddings.position_embeddings", "beit.shared_position_bias.relative_position_bias_table"}


def from_hf_beit_mim(hf_state: Mapping[str, Tensor], *, depth: int) -> dict[str, Tensor]:
    """``BeitForMaskedImageModeling`` state dict -> state dict of :class:`modalities.image.objectives.beit.BEiT`
    (keys ``backbone.adapter.*``, ``backbone.encoder.*``, ``head.*``), loadable with ``strict=True``.
    Raises on a second final norm, per-layer relative tables, a key bias, a wrong depth or any unconverted entry."""
    if any(k.startswith("beit.layernorm.") for k in hf_state):
        raise ValueError("beit.layernorm present (use_mean_pooling=False): the HF model applies two final "
                         "LayerNorms, which the unimim encoder does not")
    check_depth(set(hf_state), "beit.layers.", depth)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for src, dst in _EMBED.items():
        if src in hf_state:
            out[dst] = hf_state[src]
            used.add(src)
        elif src not in _OPTIONAL:
            raise KeyError(f"HF state dict lacks {src!r}; is it a BeitForMaskedImageModeling with use_mask_token?")
    if sum(k in hf_state for k in _OPTIONAL) != 1:
        raise ValueError("expected exactly one of absolute position embeddings and a shared relative bias table")
    for i in range(depth):
        hf, ours = f"beit.layers.{i}.", f"backbone.encoder.blocks.{i}."
        if hf + "attention.k_proj.bias" in hf_state:
            raise ValueError(f"{hf}attention.k_proj.bias present; the BEiT layout has no key bias")
        qkv = [hf_state[f"{hf}attention.{n}_proj.weight"] for n in "qkv"]  # 3 x (D, D)
        out[ours + "attn.qkv.weight"] = torch.cat(qkv, dim=0)  # (3D, D)
        used.update(f"{hf}attention.{n}_proj.weight" for n in "qkv")
        for src, dst in _LAYER.items():
            if hf + src in hf_state:
                out[ours + dst] = hf_state[hf + src]
                used.add(hf + src)
            elif not src.startswith("lambda"):
                raise KeyError(f"HF state dict lacks {hf + src!r}")
    require_all_converted(hf_state, used, "HF")
    return out


def beit_config_to_unimim(hf_config: Any) -> tuple[ImageAdapterConfig, EncoderConfig, int]:
    """(adapter config, encoder config with a final norm, vocabulary size K) equivalent to a ``BeitConfig``."""
    if not getattr(hf_config, "use_mean_pooling", True):
        raise ValueError("use_mean_pooling=False: BeitForMaskedImageModeling then normalises twice (unsupported)")
    adapter, encoder = hf_config_to_unimim(hf_config)
    encoder.final_norm = True  # the MIM head's layernorm
    return adapter, encoder, int(hf_config.vocab_size)
