"""Representation-collapse monitor (data2vec's ``min_target_var`` / ``min_pred_var`` guard).

The statistic is the per-channel standard deviation across positions, averaged over channels (ref: fairseq
examples/data2vec/models/data2vec_audio.py@3d262bb ``compute_var``, which is named var but returns a std).
"""

from __future__ import annotations

import torch
from torch import Tensor


class CollapseError(RuntimeError):
    """Raised when targets or predictions lose their variance: the run has collapsed."""


def channel_std(x: Tensor) -> Tensor:
    """x: (M, D) -> scalar mean over channels of the std over the M positions."""
    x = x.detach().float().reshape(-1, x.shape[-1])  # (.., D) -> (M, D)
    if x.shape[0] < 2:
        return torch.zeros((), device=x.device)
    return torch.sqrt(x.var(dim=0) + 1e-6).mean()


def check_collapse(stats: dict[str, float | Tensor], floors: dict[str, float], step: int) -> None:
    """Raise :class:`CollapseError` if any ``stats[name] < floors[name]`` (a floor of 0 is off). Only a statistic
    with a floor is read on the host (a 0-d device tensor waits for the device there); the others are left alone."""
    watched = {k: float(v) for k, v in stats.items() if floors.get(k, 0.0) > 0}
    low = {k: v for k, v in watched.items() if v < floors[k]}
    if low:
        detail = ", ".join(f"{k}={v:.4g} < {floors[k]:.4g}" for k, v in low.items())
        raise CollapseError(
            f"representation collapse at step {step}: {detail}. Lower the learning rate, raise the EMA decay "
            "or check the data (the floors are data2vec.min_target_std / min_pred_std)."
        )
