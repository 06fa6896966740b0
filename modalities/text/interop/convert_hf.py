"""Convert between Hugging Face ``transformers.Data2VecTextModel`` state dicts and the unimim text backbone.

The HF class is the RoBERTa architecture of data2vec text 1.0 (data2vec.md §6.2): word + position + token-type
embeddings, an embedding LayerNorm, post-LN blocks with separate query / key / value projections. The unimim side
is the ``backbone`` of an objective::

    nn.ModuleDict({"adapter": TextAdapter(...), "encoder": TransformerEncoder(EncoderConfig(norm_first=False,
                                                                                             final_norm=False))})

Key map (``{i}`` = layer index, P = ``pad_token_id``, which must be ``<pad>`` = 1 as in RoBERTa):

    embeddings.word_embeddings.weight (V, D)                   <-> adapter.tokens.weight
    embeddings.position_embeddings.weight[P + 1 :] (T, D)      <-> adapter.pos_embed   (+ token_type_embeddings[0])
    embeddings.LayerNorm.{weight,bias}                         <-> adapter.norm.{weight,bias}
    encoder.layer.{i}.attention.self.{query,key,value}.*       <-> encoder.blocks.{i}.attn.qkv.*  (q; k; v)
    encoder.layer.{i}.attention.output.dense.*                 <-> encoder.blocks.{i}.attn.proj.*
    encoder.layer.{i}.attention.output.LayerNorm.*             <-> encoder.blocks.{i}.norm1.*
    encoder.layer.{i}.intermediate.dense.* / output.dense.*    <-> encoder.blocks.{i}.mlp.fc1.* / fc2.*
    encoder.layer.{i}.output.LayerNorm.*                       <-> encoder.blocks.{i}.norm2.*

Positions: RoBERTa numbers the real tokens of a right-padded sequence P + 1, P + 2, ... (fairseq's offset), so
row P + 1 + t of HF's table is unimim's position t; rows 0..P serve only padding. The single token-type embedding
is a constant added to every token and is folded into the positions (the reverse direction writes zeros there).
Numerics need the same LayerNorm eps: data2vec text used 1e-5, HF's default is 1e-12 (:func:`hf_config_to_unimim`
copies the config's value). This module needs no ``transformers`` import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from modalities.text.data.tokenizer import PAD_ID
from modalities.text.model.adapter import TextAdapterConfig
from unimim.nn.encoder import EncoderConfig

_LAYER_RENAMES = {
    "attention.output.dense": "attn.proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "norm2",
}
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.")


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if not prefix:
        return dict(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _depth(keys: set[str]) -> int:
    layers = {int(k.split(".")[2]) for k in keys if k.startswith("encoder.layer.")}
    if layers != set(range(len(layers))):
        raise ValueError(f"HF state has non-contiguous encoder layers {sorted(layers)}")
    return len(layers)


def from_hf_data2vec_text(hf_state: Mapping[str, Tensor], *, prefix: str = "",
                          pad_token_id: int = PAD_ID) -> dict[str, Tensor]:
    """HF ``Data2VecTextModel`` state dict (``prefix="data2vec_text."`` for task models) -> unimim backbone state.

    The result loads with ``strict=True`` into ``ModuleDict({"adapter": TextAdapter, "encoder": TransformerEncoder})``
    whose ``adapter.max_positions`` is the HF ``max_position_embeddings - pad_token_id - 1``."""
    if pad_token_id != PAD_ID:
        raise ValueError(f"HF pad_token_id={pad_token_id}, but unimim's <pad> id is fixed at {PAD_ID}")
    state = {k: v for k, v in _strip(hf_state, prefix).items() if not k.startswith(_IGNORED)}
    out: dict[str, Tensor] = {}
    pos = state.pop("embeddings.position_embeddings.weight")  # (P + 1 + T, D)
    tt = state.pop("embeddings.token_type_embeddings.weight", None)  # (types, D)
    out["adapter.pos_embed"] = pos[pad_token_id + 1 :].clone() + (tt[0] if tt is not None else 0)  # (T, D)
    out["adapter.tokens.weight"] = state.pop("embeddings.word_embeddings.weight")
    for name in ("weight", "bias"):
        out[f"adapter.norm.{name}"] = state.pop(f"embeddings.LayerNorm.{name}")
    for i in range(_depth(set(state))):
        hf, ours = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for name in ("weight", "bias"):
            qkv = [state.pop(f"{hf}attention.self.{p}.{name}") for p in ("query", "key", "value")]
            out[f"{ours}attn.qkv.{name}"] = torch.cat(qkv, dim=0)  # 3 x (D, ...) -> (3D, ...)
            for src, dst in _LAYER_RENAMES.items():
                out[f"{ours}{dst}.{name}"] = state.pop(f"{hf}{src}.{name}")
    if state:
        raise ValueError(f"unconverted HF keys: {sorted(state)[:8]}")
    return out


def to_hf_data2vec_text(state: Mapping[str, Tensor], *, pad_token_id: int = PAD_ID) -> dict[str, Tensor]:
    """unimim backbone state (``adapter.*``, ``encoder.*``) -> HF ``Data2VecTextModel`` state dict (no pooler),
    for a config with ``max_position_embeddings = adapter.max_positions + pad_token_id + 1``, ``type_vocab_size=1``."""
    if pad_token_id != PAD_ID:
        raise ValueError(f"pad_token_id must be unimim's <pad> id {PAD_ID}, got {pad_token_id}")
    state = dict(state)
    if any(k.startswith("encoder.norm.") for k in state):
        raise ValueError("a RoBERTa/data2vec text encoder has no final LayerNorm (encoder.final_norm: false)")
    if "adapter.pos_embed" not in state:  # sincos / none positions are not part of the state
        raise ValueError("Data2VecTextModel has learned absolute positions; this state has none (convert an encoder "
                         "trained with adapter.positions: learned)")
    pos = state.pop("adapter.pos_embed")  # (T, D)
    out: dict[str, Tensor] = {
        "embeddings.word_embeddings.weight": state.pop("adapter.tokens.weight"),
        "embeddings.position_embeddings.weight": torch.cat([pos.new_zeros(pad_token_id + 1, pos.shape[1]), pos]),
        "embeddings.token_type_embeddings.weight": pos.new_zeros(1, pos.shape[1]),
    }
    for name in ("weight", "bias"):
        out[f"embeddings.LayerNorm.{name}"] = state.pop(f"adapter.norm.{name}")
    depth = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    for i in range(depth):
        hf, ours = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for name in ("weight", "bias"):
            q, k, v = state.pop(f"{ours}attn.qkv.{name}").chunk(3, dim=0)  # (3D, ...) -> 3 x (D, ...)
            for part, t in (("query", q), ("key", k), ("value", v)):
                out[f"{hf}attention.self.{part}.{name}"] = t.clone()
            for src, dst in _LAYER_RENAMES.items():
                out[f"{hf}{src}.{name}"] = state.pop(f"{ours}{dst}.{name}")
    if state:
        raise ValueError(f"unconverted unimim keys: {sorted(state)[:8]}")
    return out


def hf_config_to_unimim(hf_config: Any) -> tuple[TextAdapterConfig, EncoderConfig]:
    """A ``Data2VecTextConfig`` -> (adapter, encoder) configs (post-LN, no final norm, the config's eps)."""
    if getattr(hf_config, "hidden_act", "gelu") != "gelu":
        raise ValueError(f"only the exact GELU activation is supported, got {hf_config.hidden_act!r}")
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")
    d, f = hf_config.hidden_size, hf_config.intermediate_size
    adapter = TextAdapterConfig(
        vocab_size=hf_config.vocab_size,
        max_positions=hf_config.max_position_embeddings - hf_config.pad_token_id - 1,
        dropout=hf_config.hidden_dropout_prob,
    )
    encoder = EncoderConfig(
        dim=d, depth=hf_config.num_hidden_layers, num_heads=hf_config.num_attention_heads, mlp_ratio=f / d,
        qkv_bias=True, norm_first=False, final_norm=False, norm_eps=hf_config.layer_norm_eps,
        dropout=hf_config.hidden_dropout_prob, attn_dropout=hf_config.attention_probs_dropout_prob,
    )
    return adapter, encoder


def unimim_to_hf_config_kwargs(adapter: TextAdapterConfig, encoder: EncoderConfig) -> dict[str, Any]:
    """Keyword arguments of a matching ``transformers.Data2VecTextConfig``."""
    if encoder.norm_first or encoder.final_norm:
        raise ValueError("HF Data2VecText is post-LN without a final norm: encoder.norm_first/final_norm must be false")
    return dict(
        vocab_size=adapter.vocab_size, hidden_size=encoder.dim, num_hidden_layers=encoder.depth,
        num_attention_heads=encoder.num_heads, intermediate_size=int(encoder.dim * encoder.mlp_ratio),
        max_position_embeddings=adapter.max_positions + PAD_ID + 1, type_vocab_size=1, layer_norm_eps=encoder.norm_eps,
        pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
        hidden_dropout_prob=encoder.dropout, attention_probs_dropout_prob=encoder.attn_dropout,
    )
