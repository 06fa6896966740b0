"""The engine interface between the training loop and a backend, and the single-process engine.

The loop only runs ``model(batch)`` under ``autocast()``, then ``backward(loss)``, ``step(step)`` and
``reduce_mean(values)``, and shows progress where ``is_main``; the DeepSpeed engine (:mod:`unimim.train.ds_engine`)
implements the same members without the loop changing. Checkpointing is per engine: ``state_dict`` here (saved
by :mod:`unimim.train.checkpoint`), DeepSpeed's own sharded files there (:mod:`unimim.train.ds_checkpoint`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from unimim.train.optim import clip_per_parameter, global_grad_norm, set_hyperparameters

Precision = Literal["fp32", "bf16", "fp16"]


class Engine(Protocol):
    model: Callable[[dict[str, Any]], Any]  # the objective as the backend runs it: model(batch) -> ObjectiveOutput
    device: torch.device
    is_main: bool          # the process that logs, shows progress and writes metrics
    world_size: int        # processes taking part in each optimizer step

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's loss (gradient accumulation is the engine's business)."""

    def step(self, step: int) -> dict[str, float | torch.Tensor]:
        """Finish optimizer step ``step``: set the lr, clip, update, zero grads. Returns lr and grad_norm (a number
        or a 0-d tensor, which the loop reads only when it logs)."""

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (every process calls it with the same keys)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available on this machine (use 'cpu' or 'auto')")
    return torch.device(name)


def scheduled(lr_schedule: np.ndarray, wd_schedule: np.ndarray | None, step: int) -> tuple[float, float | None]:
    """The lr and the weight decay (None: not scheduled) of optimizer step ``step`` (the last value past the end)."""
    lr = float(lr_schedule[min(step, len(lr_schedule) - 1)])
    wd = None if wd_schedule is None else float(wd_schedule[min(step, len(wd_schedule) - 1)])
    return lr, wd


class SingleProcessEngine:
    """One process on a CPU or one GPU: autocast mixed precision, accumulation, clipping, step-indexed lr.

    Args:
        model: the objective (trainable parameters only are optimised).
        optimizer: built over ``model``'s parameters; its groups' lr are overwritten from ``lr_schedule`` each step.
        lr_schedule: (total_steps,) peak-scaled learning rates.
        accumulate: micro-batches per optimizer step; each micro-batch loss is divided by it.
        clip_grad: max gradient norm, or None.
        clip_mode: ``global`` (one norm over every gradient) or ``per_param`` (each gradient on its own, iBOT).
        wd_schedule: (total_steps,) weight decay of the decayed group (optimizer groups with ``wd_scale``), or None
            to keep the optimizer's.
        precision: fp32, bf16 (autocast, no scaler) or fp16 (autocast + GradScaler, CUDA only).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_schedule: np.ndarray,
        *,
        device: torch.device,
        accumulate: int = 1,
        clip_grad: float | None = None,
        clip_mode: str = "global",
        wd_schedule: np.ndarray | None = None,
        precision: Precision = "bf16",
    ) -> None:
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("fp16 training needs a CUDA device; use precision: bf16 on the CPU")
        self.model = model.to(device)
        self.device = device
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.accumulate = accumulate
        self.clip_grad = clip_grad
        self.clip_mode = clip_mode
        self.wd_schedule = wd_schedule
        self.precision = precision
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.is_main = True
        self.world_size = 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.accumulate).backward()

    def step(self, step: int) -> dict[str, float | torch.Tensor]:
        lr, wd = scheduled(self.lr_schedule, self.wd_schedule, step)
        set_hyperparameters(self.optimizer, lr, wd)
        self.scaler.unscale_(self.optimizer)
        if self.clip_mode == "per_param":
            grad_norm = global_grad_norm(self._params)  # logged before clipping, as the global mode does
            if self.clip_grad is not None:
                clip_per_parameter(self._params, self.clip_grad)
        else:
            max_norm = self.clip_grad if self.clip_grad is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)  # () on the device, read at the log
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        out = {"lr": lr, "grad_norm": grad_norm}
        if wd is not None:
            out["weight_decay"] = wd
        return out

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        return dict(values)  # one process: nothing to average

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
