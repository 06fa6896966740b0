"""Is encoder A better than encoder B on a probe? The accuracy difference on the same test examples, with a paired
bootstrap interval (Efron & Tibshirani 1993, ch. 13; the paired form resamples examples, keeping each example's two
outcomes together, so that what both encoders get right or wrong cancels).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def paired_bootstrap(
    correct_a: Tensor, correct_b: Tensor, *, samples: int = 10_000, level: float = 0.95, seed: int = 0,
    chunk: int = 500,
) -> dict[str, float]:
    """Accuracy of A minus accuracy of B on the same M test examples, with a percentile bootstrap interval.

    Args:
        correct_a: (M,) bool (or 0/1) per-example correctness of encoder A.
        correct_b: (M,) bool (or 0/1) correctness of encoder B on the same examples, in the same order.
        samples: bootstrap resamples of the M examples (with replacement).
        level: coverage of the interval, in (0, 1).
        seed: seed of the resampling generator (results are deterministic).
        chunk: resamples drawn at a time (memory O(chunk * M)).

    Returns:
        ``{"diff", "low", "high", "level", "num_examples"}``: the observed difference acc(A) - acc(B) and the
        ``level`` percentile interval of the resampled differences.
    """
    if correct_a.dim() != 1 or correct_a.shape != correct_b.shape:
        raise ValueError(f"need two (M,) correctness vectors of the same length, got {tuple(correct_a.shape)} and "
                         f"{tuple(correct_b.shape)}")
    if correct_a.numel() == 0:
        raise ValueError("no test examples to compare")
    if samples < 1 or chunk < 1:
        raise ValueError(f"samples and chunk must be >= 1, got {samples} and {chunk}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = correct_a.double().cpu() - correct_b.double().cpu()  # (M,) in {-1, 0, 1}
    m = d.shape[0]
    gen = torch.Generator().manual_seed(seed)
    means = []
    for s in range(0, samples, chunk):
        idx = torch.randint(0, m, (min(chunk, samples - s), m), generator=gen)  # (c, M)
        means.append(d[idx].mean(dim=1))  # (c,)
    boot = torch.cat(means)  # (samples,)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(boot, torch.tensor([tail, 1.0 - tail], dtype=boot.dtype)).tolist()
    return {"diff": float(d.mean()), "low": low, "high": high, "level": level, "num_examples": float(m)}
