"""Regression losses at masked positions (data2vec, Baevski et al. 2022, §3.4 "Objective").

loss = mean over masked positions of  scale * sum_d l(p_d - y_d),  l = L2 (beta = 0) or smooth-L1(beta)
(ref: fairseq examples/data2vec/models/data2vec_audio.py@3d262bb ``forward``: ``F.mse_loss`` / ``F.smooth_l1_loss``
with reduction="none", summed over channels, scaled by 1/sqrt(D) unless ``loss_scale`` is set; gradients divided by
the number of masked frames). ``scale = 1/D`` reproduces the vision fork's element-wise mean.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def resolve_scale(scale: float | str, dim: int) -> float:
    """'inv_sqrt_dim' -> 1/sqrt(D) (speech, v2); 'inv_dim' -> 1/D (element mean, vision 1.0); a number as is."""
    if scale == "inv_sqrt_dim":
        return 1.0 / math.sqrt(dim)
    if scale == "inv_dim":
        return 1.0 / dim
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return float(scale)
    raise ValueError(f"loss scale must be a number, 'inv_sqrt_dim' or 'inv_dim', got {scale!r}")


def regression_loss(pred: Tensor, target: Tensor, *, beta: float = 0.0, scale: float = 1.0) -> Tensor:
    """pred, target: (M, D) at the M masked positions -> scalar.

    beta = 0: squared error; beta > 0: smooth-L1 (0.5 x^2 / beta if |x| < beta else |x| - beta / 2). Summed over D,
    averaged over M, times ``scale`` (:func:`resolve_scale`); computed in float32. Select the masked rows first,
    e.g. ``regression_loss(pred[mask], target[mask])`` with a (B, T) bool ``mask``; M = 0 is an error.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    if pred.shape[0] == 0:
        raise ValueError("no masked positions in the batch: the loss is undefined (check the mask generator)")
    pred, target = pred.float(), target.float()
    if beta == 0:
        per_elem = F.mse_loss(pred, target, reduction="none")
    else:
        per_elem = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    return per_elem.sum(dim=-1).mean() * scale  # (M, D) -> (M,) -> ()
