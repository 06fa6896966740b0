"""Convert between Hugging Face ``transformers.Data2VecAudioModel`` state dicts and the unimim speech backbone.

The HF class (``transformers.models.data2vec.modeling_data2vec_audio``) is the data2vec speech base layout
(data2vec.md §6.2): a layer-norm conv feature encoder, LayerNorm + projection, a 5-layer conv positional encoder,
a LayerNorm before the post-LN blocks with separate q / k / v projections. The unimim side is

    nn.ModuleDict({"adapter": SpeechAdapter(conv_norm="layer"), "encoder": TransformerEncoder(norm_first=False,
                                                                                          final_norm=False)})

i.e. the ``backbone`` of :class:`unimim.objectives.base.Objective`. Key map (``{i}`` = layer index):

    masked_spec_embed (D,)                                   <-> adapter.mask_emb
    feature_extractor.conv_layers.{i}.conv.weight            <-> adapter.feature_encoder.layers.{i}.conv.weight
    feature_extractor.conv_layers.{i}.layer_norm.*           <-> adapter.feature_encoder.layers.{i}.norm.*
    feature_projection.layer_norm.* / projection.*           <-> adapter.feature_norm.* / adapter.projection.*
    encoder.pos_conv_embed.layers.{i}.conv.*                 <-> adapter.pos_conv.layers.{i}.conv.*
    encoder.layer_norm.*                                     <-> adapter.norm.*
    encoder.layers.{i}.attention.{q,k,v}_proj.{weight,bias}  <-> encoder.blocks.{i}.attn.qkv.{weight,bias} (q; k; v)
    encoder.layers.{i}.attention.out_proj.*                  <-> encoder.blocks.{i}.attn.proj.*
    encoder.layers.{i}.layer_norm.* / final_layer_norm.*     <-> encoder.blocks.{i}.norm1.* / norm2.*
    encoder.layers.{i}.feed_forward.intermediate_dense.*     <-> encoder.blocks.{i}.mlp.fc1.*
    encoder.layers.{i}.feed_forward.output_dense.*           <-> encoder.blocks.{i}.mlp.fc2.*

HF's ``hidden_states[0]`` is the adapter's output tokens and ``hidden_states[i + 1]`` block i's output. This module
needs no ``transformers`` import; :func:`hf_config_to_unimim` / :func:`unimim_to_hf_config_kwargs` translate configs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from modalities.speech.model.adapter import SpeechAdapterConfig
from unimim.nn.encoder import EncoderConfig

_FIXED: dict[str, str] = {
    "masked_spec_embed": "adapter.mask_emb",
    "feature_projection.layer_norm.weight": "adapter.feature_norm.weight",
    "feature_projection.layer_norm.bias": "adapter.feature_norm.bias",
    "feature_projection.projection.weight": "adapter.projection.weight",
    "feature_projection.projection.bias": "adapter.projection.bias",
    "encoder.layer_norm.weight": "adapter.norm.weight",
    "encoder.layer_norm.bias": "adapter.norm.bias",
}
_PATTERNS: list[tuple[str, str]] = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", r"adapter.feature_encoder.layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", r"adapter.feature_encoder.layers.\1.norm.\2"),
    (r"encoder\.pos_conv_embed\.layers\.(\d+)\.conv\.(weight|bias)", r"adapter.pos_conv.layers.\1.conv.\2"),
    (r"encoder\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)", r"encoder.blocks.\1.attn.proj.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)", r"encoder.blocks.\1.norm1.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.blocks.\1.norm2.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)", r"encoder.blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)", r"encoder.blocks.\1.mlp.fc2.\2"),
]
_QKV = re.compile(r"encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)")
_FUSED = re.compile(r"encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if not prefix:
        return dict(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def from_hf_data2vec_audio(hf_state: Mapping[str, Tensor], *, prefix: str = "") -> dict[str, Tensor]:
    """HF ``Data2VecAudioModel`` state dict (``prefix="data2vec_audio."`` for the task heads' models) -> unimim
    backbone state dict. Unknown keys are an error: nothing is dropped silently."""
    state = _strip(hf_state, prefix)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if key in _FIXED:
            out[_FIXED[key]] = value
            continue
        m = _QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _PATTERNS:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"HF keys with no unimim counterpart: {sorted(unknown)[:8]}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"layer {layer}: incomplete q/k/v {kind}s ({sorted(parts)})")
        out[f"encoder.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3D, ..)
    return out


def to_hf_data2vec_audio(state: Mapping[str, Tensor], *, prefix: str = "") -> dict[str, Tensor]:
    """unimim speech backbone state dict -> HF ``Data2VecAudioModel`` state dict (keys prefixed with ``prefix``)."""
    inverse_fixed = {v: k for k, v in _FIXED.items()}
    inverse_patterns = []
    for pattern, repl in _PATTERNS:  # invert the simple one-group-per-index renames
        src = repl.replace(".", r"\.").replace(r"\1", r"(\d+)").replace(r"\2", r"(weight|bias)")
        dst = pattern.replace(r"\.", ".").replace(r"(\d+)", r"\1").replace("(weight|bias)", r"\2")
        inverse_patterns.append((src, dst))
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key in inverse_fixed:
            out[prefix + inverse_fixed[key]] = value
            continue
        m = _FUSED.fullmatch(key)
        if m:
            layer, kind = m.groups()
            for name, part in zip("qkv", value.chunk(3, dim=0)):  # (3D, ..) -> 3 x (D, ..)
                out[f"{prefix}encoder.layers.{layer}.attention.{name}_proj.{kind}"] = part.clone()
            continue
        for src, dst in inverse_patterns:
            if re.fullmatch(src, key):
                out[prefix + re.sub(src, dst, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"unimim keys with no HF Data2VecAudio counterpart: {sorted(unknown)[:8]} (the HF model has "
                       "only the layer-norm conv encoder, biased q/k/v and no layer scale)")
    return out


def hf_config_to_unimim(hf_config: Any) -> tuple[SpeechAdapterConfig, EncoderConfig]:
    """``Data2VecAudioConfig`` -> (adapter config, encoder config) describing the same network."""
    c = hf_config
    if c.hidden_act != "gelu" or c.feat_extract_activation != "gelu":
        raise ValueError(f"only GELU activations are supported, got {c.hidden_act!r} / {c.feat_extract_activation!r}")
    adapter = SpeechAdapterConfig(
        conv_layers=[list(t) for t in zip(c.conv_dim, c.conv_kernel, c.conv_stride)],
        conv_norm="layer", conv_bias=bool(c.conv_bias), pos_conv_depth=c.num_conv_pos_embeddings,
        pos_conv_kernel=c.conv_pos_kernel_size, pos_conv_groups=c.num_conv_pos_embedding_groups,
    )
    encoder = EncoderConfig(
        dim=c.hidden_size, depth=c.num_hidden_layers, num_heads=c.num_attention_heads,
        mlp_ratio=c.intermediate_size / c.hidden_size, qkv_bias=True, norm_first=False, final_norm=False,
        norm_eps=c.layer_norm_eps,
    )
    return adapter, encoder


def unimim_to_hf_config_kwargs(adapter: SpeechAdapterConfig, encoder: EncoderConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.Data2VecAudioConfig`` for the same network (dropouts off)."""
    if adapter.conv_norm != "layer" or encoder.norm_first or encoder.final_norm or encoder.qkv_bias is not True:
        raise ValueError("Data2VecAudioModel is the layer-norm conv, post-LN, biased-qkv layout")
    dims, kernels, strides = zip(*adapter.conv_layers)
    return dict(
        conv_dim=list(dims), conv_kernel=list(kernels), conv_stride=list(strides), conv_bias=adapter.conv_bias,
        num_conv_pos_embeddings=adapter.pos_conv_depth, conv_pos_kernel_size=adapter.pos_conv_kernel,
        num_conv_pos_embedding_groups=adapter.pos_conv_groups, hidden_size=encoder.dim,
        num_hidden_layers=encoder.depth, num_attention_heads=encoder.num_heads,
        intermediate_size=int(encoder.dim * encoder.mlp_ratio), layer_norm_eps=encoder.norm_eps,
        hidden_act="gelu", feat_extract_activation="gelu", hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
    )
