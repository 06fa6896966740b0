"""Step-indexed schedules, built once as arrays (lengths in optimizer steps; no pseudo-epochs)."""

from __future__ import annotations

import math

import numpy as np


def cosine_with_warmup(
    base: float, final: float, total_steps: int, warmup_steps: int, start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``start`` to ``base`` over ``warmup_steps``, then cosine decay to ``final``.

    Returns an array of length ``total_steps``: value i is used for optimizer step i (0-based).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(start, base, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    n = total_steps - warmup_steps
    i = np.arange(n)
    decay = final + 0.5 * (base - final) * (1 + np.cos(math.pi * i / max(n, 1)))
    return np.concatenate([warm, decay])

