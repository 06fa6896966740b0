"""Layer-wise learning-rate decay (BEiT, Bao et al. 2022, §2.6 / appendix; MAE, He et al. 2022, appendix A.2).

A parameter of layer ``layer_id`` gets ``lr x decay^(L + 1 - layer_id)`` in an encoder of L blocks: the embeddings
(layer 0) learn slowest, block i is layer i + 1, and the final norm, ``fc_norm`` and the head (layer L + 1) learn at
the full rate. Weight decay is off for biases, norms, tokens and position tables. Follows MAE ``util/lr_decay.py``
(``param_groups_lrd``, ``get_layer_id_for_vit``); written against the parameter names of a unimim backbone, where
the blocks of the transformer are ``...blocks.{i}.`` and everything before them lives in the adapter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from unimim.train.optim import OptimConfig, no_decay

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


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
                     weight_decay: float) -> list[dict]:
    """Optimizer groups, one per (layer, decayed or not): ``params``, ``lr_scale`` (read by the engine's
    :func:`~unimim.train.optim.set_hyperparameters`), ``weight_decay`` and ``wd_scale``; plus ``layer_id`` and
    ``names`` for inspection. Frozen parameters are left out."""
    scales = layer_scales(layer_decay, depth)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth) if layer_decay != 1.0 else depth + 1  # (1.0: one rate, any backbone)
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
    """AdamW over ``model``'s trainable parameters in :func:`param_groups_lrd` groups. ``depth`` 0 (a backbone
    without transformer blocks, e.g. SimMIM's Swin stages) is refused unless ``layer_decay`` is 1."""
    if depth == 0 and layer_decay != 1.0:
        raise ValueError("layer-wise lr decay needs the transformer blocks of the backbone, and this one has none "
                         "(SimMIM's Swin has stages, the dVAE convolutions): set finetune.layer_decay=1.0")
    named = list(model.named_parameters())
    if depth and layer_decay != 1.0:
        found = {int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))}
        if found != set(range(depth)):
            raise ValueError(f"layer-wise lr decay: the parameter names show blocks {sorted(found)}, expected "
                             f"0..{depth - 1}; set finetune.layer_decay=1.0 for this backbone")
    groups = param_groups_lrd(named, depth, layer_decay=layer_decay, weight_decay=cfg.weight_decay)
    for g in groups:
        del g["names"]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps)
