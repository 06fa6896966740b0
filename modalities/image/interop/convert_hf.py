"""Convert between Hugging Face ``transformers.Data2VecVisionModel`` state dicts and the unimim image backbone.

The HF class (``transformers.models.data2vec.modeling_data2vec_vision.Data2VecVisionModel``) is the BEiT
architecture (Bao et al. 2021) as used by data2vec-vision 1.0 (Baevski et al. 2022): pre-LN blocks, separate
``query`` / ``key`` / ``value`` projections with no key bias, layer scale ``lambda_1`` / ``lambda_2`` and one
shared relative position bias table (BEiT / data2vec-vision layout, data2vec.md §6.2). The unimim side is

    nn.ModuleDict({"adapter": ImageAdapter(..., positions="relative" | "learned"),
                   "encoder": TransformerEncoder(EncoderConfig(qkv_bias="qv", layer_scale_init=...))})

i.e. the ``backbone`` of :class:`unimim.objectives.base` objectives. Key map (``{i}`` = layer index):

    embeddings.cls_token / mask_token (1, 1, D)                  <-> adapter.cls_token / adapter.mask_token
    embeddings.patch_embeddings.projection.{weight,bias}         <-> adapter.patch_embed.{weight,bias}
    embeddings.position_embeddings (1, T, D)                     <-> adapter.pos_embed          (absolute)
    encoder.relative_position_bias.relative_position_bias_table  <-> adapter.rel_pos.table      (shared rel. bias)
    encoder.layer.{i}.layernorm_before / layernorm_after         <-> encoder.blocks.{i}.norm1 / norm2
    encoder.layer.{i}.attention.attention.{query,key,value}.weight  <-> encoder.blocks.{i}.attn.qkv.weight (q; k; v)
    encoder.layer.{i}.attention.attention.{query,value}.bias     <-> encoder.blocks.{i}.attn.{q_bias,v_bias}
    encoder.layer.{i}.attention.output.dense                     <-> encoder.blocks.{i}.attn.proj
    encoder.layer.{i}.intermediate.dense / output.dense          <-> encoder.blocks.{i}.mlp.fc1 / fc2
    encoder.layer.{i}.lambda_1 / lambda_2 (D,)                   <-> encoder.blocks.{i}.ls1.gamma / ls2.gamma
    layernorm.{weight,bias}                                      <-> encoder.norm.{weight,bias}

Relative position table layout: HF's ``generate_relative_position_index`` and
:func:`modalities.image.model.relative_position.relative_position_index` give the same index for a square grid
((dy + H - 1)(2W - 1) + dx + W - 1 for patch pairs; then cls->patch, patch->cls, cls->cls), so the table is copied
unchanged. State dicts that still carry HF's ``relative_position_index`` buffer (transformers 4.x) are re-indexed
through that buffer instead of relying on the layouts being equal.

Numerics: the converted weights reproduce the HF model only with the same LayerNorm eps; HF's default is 1e-12,
BEiT / data2vec-vision trained with 1e-6, and the released ``facebook/data2vec-vision-*`` configs say 1e-12.
:func:`hf_config_to_unimim` copies the config's value unchanged. This module needs no ``transformers`` import.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from modalities.image.model.adapter import ImageAdapterConfig
from modalities.image.model.relative_position import relative_position_index
from unimim.nn.encoder import EncoderConfig

logger = logging.getLogger(__name__)

_HF_TABLE = "encoder.relative_position_bias.relative_position_bias_table"
_HF_INDEX = "encoder.relative_position_bias.relative_position_index"
_HF_POS = "embeddings.position_embeddings"
_PER_LAYER_TABLE = re.compile(r"encoder\.layer\.\d+\.attention\.attention\.relative_position_bias\.")

# per-layer one-to-one renames: HF suffix -> unimim suffix (relative to the layer / block prefix)
_LAYER_RENAMES: dict[str, str] = {
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.value.bias": "attn.v_bias",
}
_LAYER_SCALE_RENAMES: dict[str, str] = {"lambda_1": "ls1.gamma", "lambda_2": "ls2.gamma"}
_EMBED_RENAMES: dict[str, str] = {
    "embeddings.cls_token": "adapter.cls_token",
    "embeddings.mask_token": "adapter.mask_token",
    "embeddings.patch_embeddings.projection.weight": "adapter.patch_embed.weight",
    "embeddings.patch_embeddings.projection.bias": "adapter.patch_embed.bias",
    _HF_POS: "adapter.pos_embed",
    _HF_TABLE: "adapter.rel_pos.table",
    "layernorm.weight": "encoder.norm.weight",
    "layernorm.bias": "encoder.norm.bias",
}


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep the entries under ``prefix`` (with it removed); the rest is logged and ignored."""
    if not prefix:
        return dict(state)
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if len(kept) < len(state):
        logger.info("ignoring %d entries outside prefix %r", len(state) - len(kept), prefix)
    if not kept:
        raise ValueError(f"no state-dict entries start with prefix {prefix!r}")
    return kept


def check_depth(keys: set[str], layer_prefix: str, depth: int) -> None:
    """Raise if the layer indices present under ``layer_prefix`` are not exactly ``0 .. depth-1``."""
    pattern = re.compile(re.escape(layer_prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if found != set(range(depth)):
        raise ValueError(
            f"depth={depth}: expected layers 0..{depth - 1} under {layer_prefix!r}, the state dict has {sorted(found)}"
        )


def _side_from_table(rows: int) -> int:
    """Grid side s of a square grid whose table has (2s - 1)^2 + 3 rows."""
    span = math.isqrt(rows - 3)
    if span * span != rows - 3 or span % 2 == 0:
        raise ValueError(f"relative position table with {rows} rows is not (2s-1)^2 + 3 for a square grid")
    return (span + 1) // 2


def reindex_relative_table(table: Tensor, source_index: Tensor) -> Tensor:
    """Re-order a relative-position bias table from another index layout into unimim's.

    Args:
        table: (E, heads) table indexed by ``source_index``.
        source_index: (T, T) long, T = 1 + H*W (square grid), row/column 0 the cls token: the source's
            table row used for each (query, key) pair.

    Returns:
        (E, heads) table ``t`` with ``t[relative_position_index(grid)] == table[source_index]`` elementwise.
        Raises ``ValueError`` when no such table exists (the two layouts do not share the same pair classes).
    """
    t = source_index.shape[0]
    side = math.isqrt(t - 1)
    if source_index.shape != (t, t) or side * side != t - 1:
        raise ValueError(f"expected a (1 + s*s, 1 + s*s) index, got {tuple(source_index.shape)}")
    ours = relative_position_index((side, side)).to(source_index.device)  # (T, T)
    entries = (2 * side - 1) ** 2 + 3
    if table.shape[0] != entries:
        raise ValueError(f"table has {table.shape[0]} rows, grid {side}x{side} needs {entries}")
    perm = torch.full((entries,), -1, dtype=torch.long, device=source_index.device)
    perm[ours.reshape(-1)] = source_index.reshape(-1).long()  # any representative pair per entry
    if (perm < 0).any() or not torch.equal(perm[ours.reshape(-1)], source_index.reshape(-1).long()):
        raise ValueError("the source relative position index is not a re-labelling of unimim's layout")
    return table[perm.to(table.device)]


def from_hf_data2vec_vision(hf_state: Mapping[str, Tensor], *, depth: int, prefix: str = "") -> dict[str, Tensor]:
    """Map a ``Data2VecVisionModel`` state dict to a unimim ``{"adapter", "encoder"}`` backbone state dict.

    Args:
        hf_state: HF state dict (pre-training style: shared relative position bias or absolute position
            embeddings, no per-layer tables). Shapes: q/k/v/output weights (D, D), fc1 (F, D), fc2 (D, F),
            ``relative_position_bias_table`` ((2s-1)^2 + 3, heads), ``position_embeddings`` (1, 1 + s^2, D).
        depth: number of layers L; must match the state dict.
        prefix: only entries starting with it are converted (e.g. ``"data2vec_vision."`` for
            ``Data2VecVisionForImageClassification``); others are ignored.

    Returns:
        A state dict for ``nn.ModuleDict({"adapter": ImageAdapter, "encoder": TransformerEncoder})`` that loads with
        ``strict=True`` when the adapter uses ``positions="relative"`` (or ``"learned"`` for absolute embeddings)
        and the encoder ``qkv_bias="qv"``, ``layer_scale_init`` set iff the HF layers have ``lambda_*``, and
        ``final_norm`` iff the HF model has ``layernorm`` (``use_mean_pooling=False``). ``qkv.weight`` is (3D, D)
        = [query; key; value]. A missing ``mask_token`` (``use_mask_token=False``, as in the released checkpoints)
        becomes zeros (1, 1, D). Tensors are shared with ``hf_state`` except the fused ``qkv.weight``, a re-indexed
        table and a zero-filled mask token.
    """
    state = _strip_prefix(hf_state, prefix)
    per_layer = [k for k in state if _PER_LAYER_TABLE.match(k)]
    if per_layer:
        raise ValueError(
            "per-layer relative position bias (use_relative_position_bias=True, e.g. fine-tuned checkpoints) is not "
            f"supported: the unimim adapter holds one shared table; found {per_layer[0]!r}"
        )
    for key in [k for k in state if k.endswith("relative_position_index")]:
        if key != _HF_INDEX:
            raise ValueError(f"unexpected index buffer {key!r}")
    if _HF_TABLE in state and _HF_POS in state:
        raise ValueError("the state dict has both absolute position embeddings and a relative bias table; "
                         "ImageAdapter supports one kind of positions")
    if _HF_TABLE not in state and _HF_POS not in state:
        raise ValueError("the state dict has neither position embeddings nor a shared relative position bias table")
    check_depth(set(state), "encoder.layer.", depth)

    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for hf_key, key in _EMBED_RENAMES.items():
        if hf_key in state:
            out[key] = state[hf_key]
            used.add(hf_key)
    for key in ("adapter.cls_token", "adapter.patch_embed.weight", "adapter.patch_embed.bias"):
        if key not in out:
            raise KeyError(f"HF state dict lacks the entry mapped to {key!r}")
    if "adapter.mask_token" not in out:
        dim = out["adapter.cls_token"].shape[-1]
        logger.warning("HF state dict has no mask_token (use_mask_token=False): using zeros (1, 1, %d)", dim)
        out["adapter.mask_token"] = out["adapter.cls_token"].new_zeros(1, 1, dim)
    if _HF_INDEX in state:
        used.add(_HF_INDEX)
        if "adapter.rel_pos.table" in out:
            out["adapter.rel_pos.table"] = reindex_relative_table(out["adapter.rel_pos.table"], state[_HF_INDEX])
            logger.info("re-indexed the relative position table through the state dict's relative_position_index")
    if "adapter.rel_pos.table" in out:
        _side_from_table(out["adapter.rel_pos.table"].shape[0])  # validates the shape

    for i in range(depth):
        hf, ours = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for src, dst in _LAYER_RENAMES.items():
            if hf + src not in state:
                raise KeyError(f"HF state dict lacks {hf + src!r}")
            out[ours + dst] = state[hf + src]
            used.add(hf + src)
        qkv = [state[f"{hf}attention.attention.{n}.weight"] for n in ("query", "key", "value")]  # 3 x (D, D)
        out[ours + "attn.qkv.weight"] = torch.cat(qkv, dim=0)  # (3D, D)
        used.update(f"{hf}attention.attention.{n}.weight" for n in ("query", "key", "value"))
        if f"{hf}attention.attention.key.bias" in state:
            raise ValueError(f"{hf}attention.attention.key.bias present; the BEiT layout has no key bias")
        scales = [s for s in _LAYER_SCALE_RENAMES if hf + s in state]
        if len(scales) == 1:
            raise ValueError(f"layer {i} has only {scales[0]}; expected both lambda_1 and lambda_2 or neither")
        for src in scales:
            out[ours + _LAYER_SCALE_RENAMES[src]] = state[hf + src]
            used.add(hf + src)

    pooler = [k for k in state if k.startswith("pooler.")]
    if pooler:
        logger.warning("dropping %d pooler entries (a head on the pooled output, not part of the backbone)",
                       len(pooler))
        used.update(pooler)
    require_all_converted(state, used, "HF")
    return out


def to_hf_data2vec_vision(
    state: Mapping[str, Tensor], *, depth: int, prefix: str = "", include_mask_token: bool = True
) -> dict[str, Tensor]:
    """Map a unimim ``{"adapter", "encoder"}`` backbone state dict to a ``Data2VecVisionModel`` state dict.

    Args:
        state: backbone state dict (keys ``adapter.*``, ``encoder.*``) of a pre-LN encoder (``norm_first=True``:
            the state dict cannot tell pre- from post-LN, so this is the caller's responsibility) with
            ``positions="relative"`` or ``"learned"``. ``qkv.weight`` (3D, D) is split into query / key / value.
            ``qkv_bias="qv"`` maps ``q_bias`` / ``v_bias``; a full ``qkv.bias`` (3D,) gives its q and v parts and its
            k part is dropped (it adds the same q.b_k to every logit of a query row, which softmax cancels);
            ``qkv_bias=False`` exports zero q/v biases.
        depth: number of blocks L; must match the state dict.
        prefix: only entries starting with it are converted (e.g. ``"backbone."`` for an objective's state dict).
        include_mask_token: emit ``embeddings.mask_token`` (False for HF configs with ``use_mask_token=False``).

    Returns:
        A state dict that loads with ``strict=True`` into ``Data2VecVisionModel`` built with
        ``use_shared_relative_position_bias`` (relative) or ``use_absolute_position_embeddings`` (learned),
        ``layer_scale_init_value > 0`` iff the blocks have layer scale, and ``use_mean_pooling=False`` iff the
        encoder has a final norm. Non-persistent buffers (HF's relative position index) are not emitted.
    """
    src = _strip_prefix(state, prefix)
    check_depth(set(src), "encoder.blocks.", depth)
    inverse = {v: k for k, v in _EMBED_RENAMES.items()}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, hf_key in inverse.items():
        if key in src:
            used.add(key)
            if key == "adapter.mask_token" and not include_mask_token:
                continue
            out[hf_key] = src[key]
    if "adapter.pos_embed" not in src and "adapter.rel_pos.table" not in src:
        raise ValueError("the backbone has no learned positions (pos_embed) or relative table; fixed sincos "
                         "positions have no Data2VecVisionModel equivalent")
    if "adapter.rel_pos.table" in src:
        _side_from_table(src["adapter.rel_pos.table"].shape[0])
    if include_mask_token and "adapter.mask_token" not in src:
        raise KeyError("state dict lacks adapter.mask_token")

    inverse_layer = {v: k for k, v in {**_LAYER_RENAMES, **_LAYER_SCALE_RENAMES}.items()}
    for i in range(depth):
        hf, ours = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        weight = src[ours + "attn.qkv.weight"]  # (3D, D)
        used.add(ours + "attn.qkv.weight")
        q, k, v = (w.clone() for w in weight.chunk(3, dim=0))  # 3 x (D, D); clones avoid shared storage
        out[hf + "attention.attention.query.weight"] = q
        out[hf + "attention.attention.key.weight"] = k
        out[hf + "attention.attention.value.weight"] = v
        if ours + "attn.qkv.bias" in src:
            qb, kb, vb = (b.clone() for b in src[ours + "attn.qkv.bias"].chunk(3))  # 3 x (D,)
            used.add(ours + "attn.qkv.bias")
            if kb.abs().max() > 0:
                logger.info("layer %d: dropping the key bias (softmax is invariant to it)", i)
            out[hf + "attention.attention.query.bias"] = qb
            out[hf + "attention.attention.value.bias"] = vb
        elif ours + "attn.q_bias" not in src:
            out[hf + "attention.attention.query.bias"] = weight.new_zeros(weight.shape[1])
            out[hf + "attention.attention.value.bias"] = weight.new_zeros(weight.shape[1])
        for dst, src_name in inverse_layer.items():
            if ours + dst in src:
                out[hf + src_name] = src[ours + dst]
                used.add(ours + dst)
            elif dst not in ("ls1.gamma", "ls2.gamma", "attn.q_bias", "attn.v_bias"):
                raise KeyError(f"state dict lacks {ours + dst!r}")
        if (ours + "ls1.gamma" in src) != (ours + "ls2.gamma" in src):
            raise ValueError(f"block {i} has only one of ls1.gamma / ls2.gamma")
    require_all_converted(src, used, "unimim")
    return out


def require_all_converted(state: Mapping[str, Any], used: set[str], what: str) -> None:
    """Raise if a conversion left entries of ``state`` unread (a layout it does not know; nothing is dropped)."""
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"unconverted {what} entries: {left[:8]}{' ...' if len(left) > 8 else ''}")


def square(value: Any, name: str) -> int:
    """An int or a square (a, a) pair -> a."""
    if isinstance(value, int):
        return value
    a, b = value
    if a != b:
        raise ValueError(f"{name}={tuple(value)} is not square; ImageAdapter supports square inputs and patches")
    return int(a)


def hf_config_to_unimim(hf_config: Any) -> tuple[ImageAdapterConfig, EncoderConfig]:
    """Pick the unimim adapter / encoder settings equivalent to a ``Data2VecVisionConfig``.

    Positions: ``use_shared_relative_position_bias`` -> ``"relative"``, ``use_absolute_position_embeddings`` ->
    ``"learned"``; per-layer relative bias, both kinds, or neither raise ``ValueError``. ``use_mean_pooling``
    -> ``final_norm=False`` (HF replaces its final LayerNorm by identity then). LayerNorm eps, dropouts, drop path
    and ``initializer_range`` are copied as they are. HF's ``hidden_dropout_prob`` also drops the embeddings, which
    the unimim adapter does not (identical in eval mode).
    """
    if getattr(hf_config, "use_relative_position_bias", False):
        raise ValueError("use_relative_position_bias=True (one table per layer) is not supported; "
                         "unimim shares one table across layers (use_shared_relative_position_bias=True)")
    shared = bool(getattr(hf_config, "use_shared_relative_position_bias", False))
    absolute = bool(getattr(hf_config, "use_absolute_position_embeddings", False))
    if shared == absolute:
        raise ValueError("exactly one of use_shared_relative_position_bias / use_absolute_position_embeddings "
                         f"must be set, got {shared} / {absolute}")
    if hf_config.hidden_act != "gelu":
        raise ValueError(f"hidden_act={hf_config.hidden_act!r}: unimim's Mlp uses exact (erf) GELU ('gelu')")
    dim, hidden = int(hf_config.hidden_size), int(hf_config.intermediate_size)
    mlp_ratio = hidden / dim
    if int(dim * mlp_ratio) != hidden:
        raise ValueError(f"intermediate_size={hidden} is not reproduced by int(hidden_size * {mlp_ratio})")
    eps = float(hf_config.layer_norm_eps)
    if eps != 1e-6:
        logger.warning("layer_norm_eps=%g copied from the HF config (BEiT / data2vec-vision trained with 1e-6)", eps)
    scale = float(getattr(hf_config, "layer_scale_init_value", 0.0))
    adapter = ImageAdapterConfig(
        image_size=square(hf_config.image_size, "image_size"),
        patch_size=square(hf_config.patch_size, "patch_size"),
        in_chans=int(hf_config.num_channels),
        positions="relative" if shared else "learned",
        cls_token=True,
    )
    encoder = EncoderConfig(
        dim=dim,
        depth=int(hf_config.num_hidden_layers),
        num_heads=int(hf_config.num_attention_heads),
        mlp_ratio=mlp_ratio,
        qkv_bias="qv",
        norm_first=True,
        final_norm=not bool(getattr(hf_config, "use_mean_pooling", False)),
        layer_scale_init=scale if scale > 0 else None,
        drop_path=float(getattr(hf_config, "drop_path_rate", 0.0)),
        dropout=float(getattr(hf_config, "hidden_dropout_prob", 0.0)),
        attn_dropout=float(getattr(hf_config, "attention_probs_dropout_prob", 0.0)),
        norm_eps=eps,
        init_std=float(getattr(hf_config, "initializer_range", 0.02)),
    )
    return adapter, encoder
