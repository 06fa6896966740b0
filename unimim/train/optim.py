"""Optimizer construction: AdamW, no weight decay on biases, norms and other 1-D parameters or tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from unimim.train.schedules import cosine_with_warmup


@dataclass
class OptimConfig:
    lr: float | None = None        # absolute peak learning rate; exactly one of lr / base_lr
    base_lr: float | None = 1.5e-4  # peak lr = base_lr * effective batch / 256 (MAE/BEiT scaling rule)
    min_lr: float = 1e-6           # end of the cosine decay
    warmup_steps: int = 100        # linear warm-up, optimizer steps
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float | None = 3.0  # max grad norm (None = off): of all gradients together, or of each (clip_mode)
    # global: one norm over every gradient (torch clip_grad_norm_); per_param: each parameter's gradient clipped to
    # its own norm clip_grad (iBOT / DINO ``clip_gradients``)
    clip_mode: Literal["global", "per_param"] = "global"
    # weight decay of the decayed group: constant weight_decay (None), or a cosine from weight_decay at step 0 to
    # weight_decay_end at the last step (iBOT / DINO: 0.04 -> 0.4; BEiT's ``--weight_decay_end``)
    weight_decay_end: float | None = None

    def __post_init__(self) -> None:
        if (self.lr is None) == (self.base_lr is None):
            raise ValueError("set exactly one of optim.lr and optim.base_lr (the other to null)")
        for name in ("lr", "base_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"optim.{name} must be > 0, got {value}")
        if not self.min_lr >= 0:
            raise ValueError(f"optim.min_lr must be >= 0, got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.weight_decay >= 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"optim.clip_grad must be > 0 (null switches clipping off), got {self.clip_grad}")
        if self.clip_mode not in ("global", "per_param"):
            raise ValueError(f"optim.clip_mode must be 'global' or 'per_param', got {self.clip_mode!r}")
        if self.weight_decay_end is not None and not self.weight_decay_end >= 0:
            raise ValueError(f"optim.weight_decay_end must be >= 0 (null: constant weight decay), got "
                             f"{self.weight_decay_end}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")


def peak_lr(cfg: OptimConfig, effective_batch: int) -> float:
    """The one place the batch-size scaling rule lives: lr = base_lr * effective_batch / 256."""
    return cfg.lr if cfg.lr is not None else cfg.base_lr * effective_batch / 256


def no_decay(name: str, p: nn.Parameter) -> bool:
    """Biases, norm weights, layer-scale gammas, tokens and position tables (all < 2-D or named tokens)."""
    return p.ndim < 2 or name.endswith(("_token", "pos_embed", ".table"))


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters with two groups: decayed (``wd_scale`` 1) and not decayed (``wd_scale`` 0);
    an engine with a weight-decay schedule sets each group's decay to the scheduled value x ``wd_scale``."""
    decay, skip = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "wd_scale": 1.0},
        {"params": skip, "weight_decay": 0.0, "wd_scale": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps, **adamw_kernel(decay + skip))


def adamw_kernel(params: list[nn.Parameter]) -> dict[str, bool]:
    """The fastest AdamW implementation torch reports for where ``params`` live: ``fused=True`` (one kernel for
    every parameter: CPU and CUDA in torch 2.11) where every parameter's device type has fused kernels, else
    ``foreach=True`` where it has foreach kernels, else torch's default (a loop over the parameters). All three
    compute the same update (``tests/train/test_optim_schedules.py`` compares them with the plain loop); torch's own
    default picks foreach on CUDA and the plain loop on the CPU. Floating-point parameters only (fused refuses
    others)."""
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices, _get_fused_kernels_supported_devices

    types = {p.device.type for p in params}
    if not params or not all(torch.is_floating_point(p) for p in params):
        return {}
    if types <= set(_get_fused_kernels_supported_devices()):
        return {"fused": True}
    if types <= set(_get_foreach_kernels_supported_devices()):
        return {"foreach": True}
    return {}


def weight_decay_schedule(cfg: OptimConfig, total_steps: int) -> np.ndarray | None:
    """(total_steps,) weight decay per optimizer step: a cosine from ``weight_decay`` to ``weight_decay_end``
    without warm-up (iBOT / DINO ``cosine_scheduler(wd, wd_end, epochs, niter)``), or None when constant."""
    if cfg.weight_decay_end is None:
        return None
    return cosine_with_warmup(cfg.weight_decay, cfg.weight_decay_end, total_steps, 0)


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None) -> None:
    """Every group's lr = ``lr`` x its ``lr_scale``; with a scheduled ``weight_decay``, its decay = that x its
    ``wd_scale`` (groups without one keep theirs)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and "wd_scale" in group:
            group["weight_decay"] = weight_decay * group["wd_scale"]


@torch.no_grad()
def clip_per_parameter(params: list[nn.Parameter], max_norm: float) -> None:
    """Each gradient scaled down to norm ``max_norm`` if above it, independently of the others (iBOT / DINO
    ``utils.clip_gradients``: coefficient ``max_norm / (norm + 1e-6)`` where below 1). The coefficients stay on the
    device (clamped at 1: a gradient below the norm is multiplied by exactly 1), so nothing waits for the host."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads, 2)  # one () per gradient
    coefs = [(max_norm / (n + 1e-6)).clamp_(max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)


def global_grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all gradients together (what ``grad_norm`` logs), without clipping: () on the device."""
    return torch.nn.utils.clip_grad_norm_(params, math.inf)
