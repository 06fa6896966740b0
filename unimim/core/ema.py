"""The EMA teacher of data2vec (and of iBOT): a frozen, fp32, eval-mode copy of a student module.

theta_T <- tau * theta_T + (1 - tau) * theta_S after every optimizer step, with tau from a step-indexed
schedule (data2vec, Baevski et al. 2022, §3.3 "Teacher parameterization"; ref: fairseq
fairseq/modules/ema_module.py and ``get_annealed_rate`` in examples/data2vec/models/data2vec_audio.py@3d262bb).

Which parameters are averaged and which are copied verbatim is explicit (``EMAConfig.copy``): the reference
copies e.g. the text embeddings and the speech positional convolution. Buffers are always copied.
The teacher is *not* an ``nn.Module`` child of the objective, so an optimizer or a DeepSpeed engine built over
the objective never sees its parameters; the objective stores its state through ``get_extra_state``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass
class EMAConfig:
    decay: float = 0.999        # tau at step 0
    end_decay: float = 0.9999   # tau after `anneal_steps` optimizer steps (ignored for "constant")
    anneal_steps: int = 30_000  # length of the anneal in optimizer steps
    schedule: Literal["constant", "linear", "cosine"] = "linear"  # linear: data2vec; cosine: iBOT/DINO
    copy: list[str] = field(default_factory=list)  # parameter-name prefixes copied from the student, not averaged

    def __post_init__(self) -> None:
        for name in ("decay", "end_decay"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"ema.{name} must be in [0, 1], got {v}")
        if self.schedule != "constant" and self.anneal_steps < 1:
            raise ValueError(f"ema.anneal_steps must be >= 1 for a {self.schedule} schedule")


def ema_decay(cfg: EMAConfig, step: int) -> float:
    """tau at optimizer step ``step`` (0-based count of completed updates before this one)."""
    if cfg.schedule == "constant":
        return cfg.decay
    frac = min(1.0, step / cfg.anneal_steps)
    if cfg.schedule == "linear":
        return cfg.decay + (cfg.end_decay - cfg.decay) * frac
    # cosine from decay to end_decay (iBOT: 0.996 -> 1)
    return cfg.end_decay - (cfg.end_decay - cfg.decay) * (math.cos(math.pi * frac) + 1) / 2


def gathered(params: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    """The one place where a student partitioned across processes (DeepSpeed ZeRO-3: each rank holds a shard,
    marked by ``ds_id``) is gathered whole for the teacher update; a no-op for ordinary parameters. Under
    DeepSpeed bf16 / fp16 the student's parameters are the engine's half-precision copy, which the fp32 teacher
    averages (as fairseq's EMAModule does with ``ema_fp32``)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters

    return GatheredParameters(params)  # all-gather on entry, re-partition on exit (read-only: no modifier rank)


class EMATeacher:
    """Frozen fp32 copy of ``student`` updated by exponential moving average.

    Contract: build it once from the student (before training, or from the initial weights); after every optimizer
    step call ``update(student, step)`` with ``step`` = the optimizer updates completed so far (1 after the first,
    as the training loop passes it), which returns the tau it used; run the teacher as ``teacher.module(...)`` under
    ``torch.no_grad()`` (it is in eval mode, requires no grad, and its parameters are in no optimizer). ``student``
    must keep the parameter names of the module it was built from. ``state_dict`` / ``load_state_dict`` save and
    restore the averaged weights (the step is the caller's to save). Works with any ``nn.Module``: nothing else of
    unimim is needed.

    Args:
        student: the module whose weights are averaged (its structure is deep-copied once).
        cfg: decay schedule and the names of parameters to copy instead of average.
    """

    def __init__(self, student: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.module = copy.deepcopy(student).float()
        self.module.requires_grad_(False)
        self.module.eval()
        names = [n for n, _ in self.module.named_parameters()]
        for prefix in cfg.copy:
            if not any(n.startswith(prefix) for n in names):
                raise ValueError(f"ema.copy entry {prefix!r} matches no parameter of the teacher")
        self._copied = {n for n in names if any(n.startswith(p) for p in cfg.copy)}
        self._pairs: tuple[int, list, list, list, list, list] | None = None  # cached per student module

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """Average ``student`` into the teacher with tau = schedule(step); return tau.

        With tau >= 1 the averaged parameters stay frozen (the data2vec 2.0 Large/Huge configs end at 1.0)."""
        decay = ema_decay(self.cfg, step)
        copy_t, copy_s, avg_t, avg_s, buffers = self._match(student)
        with gathered(copy_s + avg_s):
            if copy_t:
                torch._foreach_copy_(copy_t, copy_s)
            if avg_t and decay < 1.0:
                src = [p_s.to(p_t.dtype) for p_t, p_s in zip(avg_t, avg_s)]  # no-op unless the student is not fp32
                torch._foreach_lerp_(avg_t, src, 1.0 - decay)  # t <- t + (1 - tau) (s - t)
        for b_t, b_s in buffers:
            b_t.copy_(b_s)
        return decay

    def _match(self, student: nn.Module) -> tuple[list, list, list, list, list]:
        """Pair teacher and student parameters by name once per student module. The Parameter objects themselves
        are kept (not detached views), so in-place optimizer updates and ``.to(device)`` moves stay visible."""
        if self._pairs is None or self._pairs[0] != id(student):
            s_params = dict(student.named_parameters())
            copy_t, copy_s, avg_t, avg_s = [], [], [], []
            for name, p_t in self.module.named_parameters():
                if name not in s_params:
                    raise KeyError(f"teacher parameter {name!r} has no student counterpart")
                p_s = s_params[name]
                if name in self._copied:
                    copy_t.append(p_t)
                    copy_s.append(p_s)
                else:
                    avg_t.append(p_t)
                    avg_s.append(p_s)
            s_buffers = dict(student.named_buffers())
            buffers = [(b, s_buffers[n]) for n, b in self.module.named_buffers() if n in s_buffers]
            self._pairs = (id(student), copy_t, copy_s, avg_t, avg_s, buffers)
        return self._pairs[1:]

    def state_dict(self) -> dict[str, Tensor]:
        """The teacher's weights and buffers (fp32), keyed as the student's."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore weights saved by :meth:`state_dict` (strict: every key must match)."""
        self.module.load_state_dict(state)
