"""data2vec regression targets: the average of the teacher's top-K layers, each normalised first.

y_t = norm_final( (1/K) * sum_{l=L-K+1}^{L} norm_layer(a_t^l) )
(data2vec, Baevski et al. 2022, §3.3 "Targets"; ref: fairseq examples/data2vec/models/data2vec_audio.py@3d262bb
``forward`` target construction and data2vec2.py ``make_targets``; vision 1.0: data2vec_vision
beit/engine_for_cyclical.py@af9a3634.)

Unlike the reference, instance norm excludes padded positions from the statistics (data2vec.md §10.7).

Standalone use (no other part of unimim needed): run any teacher that returns its per-block outputs, then
``y = build_targets(outputs, top_k=K, layer_norm="instance", final_norm="none")`` (B, T, D), and regress the
student's predictions at the masked positions onto ``y[mask]`` (:func:`unimim.core.losses.regression_loss`). Compute
the targets under ``torch.no_grad()``: nothing here detaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Norm = Literal["instance", "layer", "none"]


def instance_norm_time(x: Tensor, padding_mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each channel over the time axis of one sequence, ignoring padded positions.

    x: (B, T, D); padding_mask: (B, T) bool, True = padding. Returns (B, T, D) (padded positions become 0).
    Matches ``F.instance_norm`` on (B, D, T) (biased variance) when nothing is padded.
    """
    if padding_mask is None:
        mean = x.mean(dim=1, keepdim=True)  # (B, 1, D)
        var = x.var(dim=1, unbiased=False, keepdim=True)  # (B, 1, D)
        return (x - mean) / torch.sqrt(var + eps)
    valid = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1, 1)
    mean = (x * valid).sum(dim=1, keepdim=True) / count  # (B, 1, D)
    var = (((x - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count  # (B, 1, D)
    return (x - mean) / torch.sqrt(var + eps) * valid


def layer_norm_tokens(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Parameter-free layer norm over the channel axis of every token. x: (B, T, D) -> (B, T, D)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def normalise(x: Tensor, kind: Norm, padding_mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """One target norm: ``instance`` (each channel over the time axis, :func:`instance_norm_time`), ``layer`` (each
    token over its channels, :func:`layer_norm_tokens`) or ``none``. x: (B, T, D) -> (B, T, D)."""
    if kind == "instance":
        return instance_norm_time(x, padding_mask, eps)
    if kind == "layer":
        return layer_norm_tokens(x, eps)
    if kind == "none":
        return x
    raise ValueError(f"unknown target norm {kind!r}; expected 'instance', 'layer' or 'none'")


def build_targets(
    layers: Sequence[Tensor],
    *,
    top_k: int,
    layer_norm: Norm,
    final_norm: Norm = "none",
    padding_mask: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Average the last ``top_k`` of ``layers`` (each (B, T, D)) after per-layer normalisation.

    Args:
        layers: the teacher's block outputs, first block first (L tensors of (B, T, D), any float dtype); the last
            ``top_k`` are used. T is whatever the caller passes: drop prefix tokens (cls) first if they must not
            take part in the instance-norm statistics, as the objectives do.
        top_k: K, between 1 and L.
        layer_norm: the norm of each layer before averaging (``instance`` for data2vec speech / text / 2.0,
            ``layer`` for data2vec 1.0 vision).
        final_norm: the norm of the average (``layer`` for vision, else usually ``none``).
        padding_mask: (B, T) bool, ``True`` = padding, excluded from instance-norm statistics (and zeroed).
    Returns:
        (B, T, D) float32 targets, whatever the autocast dtype of the teacher; not detached.
    """
    if not 1 <= top_k <= len(layers):
        raise ValueError(f"top_k={top_k} must be between 1 and the number of layers ({len(layers)})")
    acc = None
    for h in layers[-top_k:]:
        h = normalise(h.float(), layer_norm, padding_mask, eps)
        acc = h if acc is None else acc + h
    y = acc / top_k  # (B, T, D)
    return normalise(y, final_norm, padding_mask, eps)
