"""Layer-wise learning-rate decay (BEiT, Bao et al. 2022, §2.6 / appendix; MAE, He et al. 2022, appendix A.2).

A parameter of layer ``layer_id`` gets ``lr x decay^(L + 1 - layer_id)`` in an encoder of L blocks: the embeddings
(layer 0) learn slowest, block i is layer i + 1, and the final norm, ``fc_norm`` and the head (layer L + 1) learn at
the full rate. Weight decay is off for biases, norms, tokens and position tables. Follows MAE ``util/lr_decay.py``
(``param_groups_lrd``, ``get_layer_id_for_vit``); written against the parameter names of a unimim backbone, where
the blocks of the transformer are ``...blocks.{i}.`` and everything before them lives in the adapter.

A hierarchical backbone (SimMIM's Swin, timm parameter names ``...layers.{s}.blocks.{j}.``, the patch merging of
stage s > 0 at ``...layers.{s}.downsample.``) counts its blocks across the stages, as SimMIM fine-tunes Swin
(``get_layer_id_for_swin`` in its ``optimizer.py``, masked-image-modeling.md §1.2): block j of stage s is layer
``depths[0] + .. + depths[s-1] + j + 1`` of L = sum(depths); a stage's patch merging, which reads the output of the
stage before, is that stage's last block's layer; the patch embedding and the mask token are layer 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from unimim.train.optim import OptimConfig, no_decay

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_STAGE_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.blocks\.(\d+)\.")  # a Swin stage's block (timm names)
_STAGE_MERGE = re.compile(r"(?:^|\.)layers\.(\d+)\.downsample\.")       # the patch merging opening stage s


def stage_depths(names: Iterable[str]) -> tuple[int, ...] | None:
    """Blocks per stage of a hierarchical (Swin) backbone read from its parameter names; None when the names show
    no stages. Stages 0..S-1 and blocks 0..d-1 of each must all be present."""
    found: dict[int, set[int]] = {}
    for name in names:
        m = _STAGE_BLOCK.search(name)
        if m is not None:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not found:
        return None
    if set(found) != set(range(len(found))) or any(b != set(range(len(b))) for b in found.values()):
        raise ValueError(f"layer-wise lr decay: the parameter names show the stage blocks "
                         f"{ {s: sorted(b) for s, b in sorted(found.items())} }, not stages 0..S-1 of blocks 0..d-1")
    return tuple(len(found[s]) for s in range(len(found)))


def stage_layer_id(name: str, depths: tuple[int, ...], *,
                   head_prefixes: tuple[str, ...] = ("head.", "fc_norm.")) -> int:
    """The layer of parameter ``name`` of a hierarchical backbone of ``depths`` blocks per stage (module docstring):
    0 for the patch embedding and the mask token, the running block count for a stage's blocks and its patch
    merging, ``sum(depths) + 1`` for the rest (final norm, ``fc_norm``, head)."""
    total = sum(depths)
    if name.startswith(head_prefixes):
        return total + 1
    m = _STAGE_BLOCK.search(name)
    if m is not None:
        return sum(depths[: int(m.group(1))]) + int(m.group(2)) + 1
    m = _STAGE_MERGE.search(name)
    if m is not None:
        return sum(depths[: int(m.group(1))])
    if ".patch_embed." in f".{name}" or name.endswith("mask_token"):
        return 0
    return total + 1


def layer_id(name: str, depth: int, *, head_prefixes: tuple[str, ...] = ("head.", "fc_norm.")) -> int:
    """The layer of parameter ``name`` in a fine-tuned model of ``depth`` blocks: 0 for the adapter (embeddings,
    tokens, positions; names under ``backbone.adapter.`` or ``adapter.``), i + 1 for ``...blocks.{i}.``, and
    ``depth + 1`` for the rest (the encoder's final norm, ``fc_norm``, the head)."""
    if name.startswith(head_prefixes):
        return depth + 1
    m = _BLOCK.search(name)
    if m is not None:
        i = int(m.group(1))
        if not 0 <= i < depth:
            raise ValueError(f"parameter {name!r} names block {i} of an encoder with {depth} blocks")
        return i + 1
    if name.startswith(("adapter.", "backbone.adapter.")):
        return 0
    return depth + 1


def layer_scales(decay: float, depth: int) -> list[float]:
    """lr multiplier of layers 0 .. depth + 1: ``decay^(depth + 1 - layer_id)``."""
    return [decay ** (depth + 1 - i) for i in range(depth + 2)]


def param_groups_lrd(named: Iterable[tuple[str, nn.Parameter]], depth: int, *, layer_decay: float,
                     weight_decay: float, stages: tuple[int, ...] | None = None) -> list[dict]:
    """Optimizer groups, one per (layer, decayed or not): ``params``, ``lr_scale`` (read by the engine's
    :func:`~unimim.train.optim.set_hyperparameters`), ``weight_decay`` and ``wd_scale``; plus ``layer_id`` and
    ``names`` for inspection. Frozen parameters are left out. ``stages``: the blocks per stage of a hierarchical
    backbone (then ``depth`` = their sum)."""
    scales = layer_scales(layer_decay, depth)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        if layer_decay == 1.0:  # one rate, any backbone
            lid = depth + 1
        else:
            lid = stage_layer_id(name, stages) if stages is not None else layer_id(name, depth)
        skip = no_decay(name, p)
        g = groups.setdefault((lid, skip), {
            "params": [], "names": [], "layer_id": lid, "lr_scale": scales[lid],
            "weight_decay": 0.0 if skip else weight_decay, "wd_scale": 0.0 if skip else 1.0,
        })
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_layer_decay_optimizer(model: nn.Module, cfg: OptimConfig, *, depth: int,
                                layer_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters in :func:`param_groups_lrd` groups. ``depth`` 0: a backbone
    without a plain stack of blocks; its stages (Swin) are read from the parameter names, and one with neither
    (e.g. convolutions only) is refused unless ``layer_decay`` is 1."""
    named = list(model.named_parameters())
    stages = None
    if layer_decay != 1.0 and depth == 0:
        stages = stage_depths(n for n, _ in named)
        if stages is None:
            raise ValueError("layer-wise lr decay needs the transformer blocks of the backbone, and this one has "
                             "none (e.g. convolutions only): set finetune.layer_decay=1.0")
        depth = sum(stages)
    elif layer_decay != 1.0:
        found = {int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))}
        if found != set(range(depth)):
            raise ValueError(f"layer-wise lr decay: the parameter names show blocks {sorted(found)}, expected "
                             f"0..{depth - 1}; set finetune.layer_decay=1.0 for this backbone")
    groups = param_groups_lrd(named, depth, layer_decay=layer_decay, weight_decay=cfg.weight_decay, stages=stages)
    for g in groups:
        del g["names"]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps)
