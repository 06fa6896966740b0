"""One budget, many step costs: a suite's budget (steps, samples, wall-clock seconds or training FLOPs) becomes each
stage's ``train.steps``, and the recipe's schedule is stretched to it.

A data2vec 2.0 step (R masks per image) costs more than a MAE step (the encoder sees a quarter of the patches);
under a ``seconds`` or ``flops`` budget each stage gets the steps its measured step cost affords (the cost is
measured on the machine before the stage starts, :func:`unimim.app.cost.measure_step_cost`, and recorded), so that
every method finishes its whole learning-rate schedule inside the same budget instead of being cut off mid-way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any


def steps_for_budget(kind: str, value: float, *, examples_per_step: int, seconds_per_step: float | None = None,
                     flops_per_step: float | None = None) -> int:
    """Optimizer steps that ``value`` of budget ``kind`` affords (at least 1).

    Args:
        kind: ``steps`` | ``samples`` | ``seconds`` | ``flops``.
        value: the budget (already this stage's share of it).
        examples_per_step: examples one optimizer step consumes over all processes (samples budget).
        seconds_per_step: measured training seconds of one step (seconds budget).
        flops_per_step: counted training FLOPs of one step over all processes (flops budget).
    """
    if kind == "steps":
        per_step = 1.0
    elif kind == "samples":
        per_step = float(examples_per_step)
    elif kind == "seconds":
        per_step = seconds_per_step if seconds_per_step is not None else float("nan")
    elif kind == "flops":
        per_step = flops_per_step if flops_per_step is not None else float("nan")
    else:
        raise ValueError(f"unknown budget kind {kind!r}; one of steps, samples, seconds, flops")
    if not per_step > 0:  # nan (not measured) or 0
        raise ValueError(f"a {kind} budget needs a positive cost per step, got {per_step}")
    return max(1, math.floor(value / per_step + 1e-9))


def _step_lengths(section: Any, prefix: str) -> Iterator[tuple[str, int]]:
    """(dotted key, value) of every integer ``*_steps`` field under a config section dict (nested sections too)."""
    if not isinstance(section, dict):
        return
    for key, value in section.items():
        if isinstance(value, dict):
            yield from _step_lengths(value, f"{prefix}{key}.")
        elif key.endswith("_steps") and isinstance(value, int) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def stretch_schedule(raw: dict[str, Any], steps: int) -> list[str]:
    """Overrides that set ``train.steps`` to ``steps`` and scale every schedule length of the recipe (integer
    ``*_steps`` fields of ``optim`` and ``method``: warm-up, EMA anneal, temperature anneals, ...) by the same factor,
    so that the schedule keeps its shape. ``raw`` is the resolved config as a dict (``to_dict(cfg)``). A length
    that was positive stays at least 1."""
    factor = steps / raw["train"]["steps"]
    out = [f"train.steps={steps}"]
    for section in ("optim", "method"):
        for key, value in _step_lengths(raw.get(section), f"{section}."):
            scaled = round(value * factor)
            out.append(f"{key}={max(scaled, 1) if value > 0 else 0}")
    return out
