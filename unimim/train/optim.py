"""Optimizer construction: AdamW, no weight decay on biases, norms and other 1-D parameters or tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float | None = None        # absolute peak learning rate; exactly one of lr / base_lr
    base_lr: float | None = 1.5e-4  # peak lr = base_lr * effective batch / 256 (MAE/BEiT scaling rule)
    min_lr: float = 1e-6           # end of the cosine decay
    warmup_steps: int = 100        # linear warm-up, optimizer steps
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float | None = 3.0  # max global grad norm (None = off)

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
    """AdamW over trainable parameters with two groups: decayed and not decayed."""
    decay, skip = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": skip, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps)
