"""The DeepSpeed engine: the same recipes on many GPUs and nodes (ZeRO stages 0-3, bf16 / fp16, accumulation and
clipping through DeepSpeed's own config), behind the loop's :class:`~unimim.train.engine.Engine` interface.

The optimizer and the learning-rate schedule still come from the recipe (the torch optimizer is handed to
DeepSpeed, which wraps it in its ZeRO optimizer; the lr of every group is set from the step-indexed schedule before
each update). The DeepSpeed JSON config is generated from the recipe (:func:`build_ds_config`), optionally
overridden by a user file, and saved in the run directory. The EMA teacher is not part of the DeepSpeed engine:
it is updated from the student after each step (under ZeRO-3 the partitioned student parameters are gathered for
that in :meth:`unimim.core.ema.EMATeacher.update`).

Refs: DeepSpeed config JSON (https://www.deepspeed.ai/docs/config-json/), ZeRO (Rajbhandari et al., SC 2020).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unimim.config import ConfigError
from unimim.objectives.base import ObjectiveOutput
from unimim.train import distributed as dist_utils
from unimim.train.engine import scheduled
from unimim.train.optim import set_hyperparameters

log = logging.getLogger(__name__)

DS_CONFIG_NAME = "deepspeed_config.json"


@dataclass
class DeepSpeedConfig:
    enabled: bool = False        # train with the DeepSpeed engine (also: `unimim pretrain --deepspeed CONFIG.json`)
    zero_stage: int = 2          # ZeRO stage: 0 (data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ weights)
    config: str | None = None    # a DeepSpeed JSON whose keys override the generated config (deep merge)
    timeout_s: float = 600.0     # collective timeout: a process that stops answering fails the others after this
                                 # (also the watchdog's bound on a micro-batch or a checkpoint write)

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.timeout_s <= 0:
            raise ValueError(f"deepspeed.timeout_s must be > 0, got {self.timeout_s}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_user_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {path} must be a JSON object at the top level")
    return data


def build_ds_config(cfg: Any, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config of experiment ``cfg`` on ``world_size`` processes.

    Batch sizes, accumulation, clipping and precision come from the recipe (``train.*``, ``optim.clip_grad``);
    a user file (``deepspeed.config``) may override anything else (ZeRO bucket sizes, offload, fp16 loss-scale
    settings, ...). A user value for a recipe-owned key must agree with the recipe: the data loader, the lr rule
    and the loop follow the recipe, so a silent disagreement would train something else than the config says.
    """
    t, precision = cfg.train, cfg.train.precision
    if cfg.optim.clip_mode != "global" and cfg.optim.clip_grad is not None:
        raise ConfigError("optim.clip_mode=per_param is not available under DeepSpeed, which clips by the global "
                          "norm only (gradient_clipping; under ZeRO each rank holds a shard of the gradients): use "
                          "clip_mode: global there, or the single-process engine")
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.accumulate,
        "train_batch_size": t.batch_size * t.accumulate * world_size,
        "gradient_clipping": float(cfg.optim.clip_grad or 0.0),
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # dynamic loss scaling (loss_scale 0): start at 2^16, halve on overflow (skipping that step), double
        # after 1000 clean steps (mixed-precision training, Micikevicius et al. 2018)
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "zero_allow_untested_optimizer": True,  # the recipe's torch AdamW (with its two weight-decay groups)
        "steps_per_print": 2**31 - 1,  # the loop logs; DeepSpeed's own step prints stay off
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.config is None:
        return generated
    merged = _merge(generated, read_user_config(cfg.deepspeed.config))
    owned = {
        "train_micro_batch_size_per_gpu": "train.batch_size",
        "gradient_accumulation_steps": "train.accumulate",
        "train_batch_size": "train.batch_size x train.accumulate x processes",
        "gradient_clipping": "optim.clip_grad",
    }
    for key, source in owned.items():
        if merged[key] != generated[key]:
            raise ConfigError(f"{cfg.deepspeed.config}: {key}={merged[key]!r} disagrees with the recipe's "
                              f"{source} ({generated[key]!r}); set it in the recipe instead")
    wanted = {"fp16": precision == "fp16", "bf16": precision == "bf16"}
    for key, on in wanted.items():
        if bool(merged.get(key, {}).get("enabled", False)) != on:
            raise ConfigError(f"{cfg.deepspeed.config}: {key}.enabled disagrees with train.precision={precision!r}; "
                              "set the precision in the recipe instead")
    return merged


def _register_zero3_externals(model: nn.Module) -> int:
    """ZeRO-3 gathers a module's parameters when that module's ``forward`` runs. Parameters read by a method of
    their owner instead (e.g. the adapter's mask / cls tokens and position table in ``embed``) are registered with
    the top-level module, so they are gathered for the whole forward pass. Returns how many were registered."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

    n = 0
    for module in model.modules():
        if module is model or not any(True for _ in module.children()):  # (model: the _Entry wrapper)
            continue  # leaf modules (Linear, LayerNorm, ...) only ever use their parameters in their forward
        for p in module.parameters(recurse=False):
            register_external_parameter(model, p)
            n += 1
    return n


class _Entry(nn.Module):
    """What DeepSpeed wraps: the objective, returning ``(loss, logs)``. ZeRO-3 re-gathers a module's partitioned
    parameters for the backward pass from hooks it places on the tensors the module's forward returns, and it
    cannot see into an :class:`ObjectiveOutput`; a tuple it can.

    The autocast context is entered here, inside DeepSpeed's ``forward``: with its bf16 / fp16 sections DeepSpeed
    holds the student in the low precision and switches off any autocast entered around its engine on CUDA
    (``deepspeed.runtime.torch_autocast.autocast_if_enabled``), which would leave the fp32 inputs and the fp32
    teacher's targets to meet bf16 weights ("Input type (float) and bias type (c10::BFloat16)")."""

    def __init__(self, objective: nn.Module, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.objective = objective
        self.autocast_dtype = autocast_dtype
        self.device_type = "cpu"  # set by DeepSpeedEngine once DeepSpeed has placed the model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.autocast_dtype is None:
            out = self.objective(batch)
        else:
            with torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype):
                out = self.objective(batch)
        return out.loss, out.logs


class DeepSpeedEngine:
    """One process of a DeepSpeed data-parallel job.

    Args:
        model: the objective (its EMA teacher is a plain attribute, so DeepSpeed never sees or casts it).
        optimizer: the recipe's optimizer over ``model``'s trainable parameters.
        lr_schedule: (total_steps,) learning rates, indexed by optimizer step.
        ds_config: the DeepSpeed JSON config (:func:`build_ds_config`).
        precision: fp32, bf16 or fp16; must match ``ds_config`` (it selects the autocast dtype).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, lr_schedule: np.ndarray, *,
                 ds_config: dict[str, Any], precision: str, wd_schedule: np.ndarray | None = None) -> None:
        import deepspeed

        self.precision = precision
        self.lr_schedule = lr_schedule
        self.wd_schedule = wd_schedule
        self.zero_stage = int(ds_config["zero_optimization"]["stage"])
        autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        entry = _Entry(model, autocast_dtype)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=entry, optimizer=optimizer, config=ds_config)
        if self.zero_stage == 3:
            _register_zero3_externals(entry)
        self.objective = model
        self.device = self.ds.device
        entry.device_type = torch.device(self.device).type
        self.rank = dist_utils.rank()
        self.world_size = dist_utils.world_size()
        self.is_main = self.rank == 0

    def model(self, batch: dict[str, Any]) -> ObjectiveOutput:
        """The objective's forward through DeepSpeed's engine (its hooks gather and scale as configured)."""
        loss, logs = self.ds(batch)
        return ObjectiveOutput(loss=loss, logs=logs)

    def autocast(self) -> contextlib.AbstractContextManager:
        """A no-op: the autocast of ``precision`` is entered inside DeepSpeed's forward (see :class:`_Entry`)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch (DeepSpeed divides by the accumulation count and reduces gradients).
        Every micro-batch but the last of an optimizer step also advances DeepSpeed's micro-step counter here;
        the last one is left to :meth:`step`, the accumulation boundary."""
        self.ds.backward(loss)
        if not self.ds.is_gradient_accumulation_boundary():
            self.ds.step()

    def step(self, step: int) -> dict[str, float]:
        lr, wd = scheduled(self.lr_schedule, self.wd_schedule, step)
        set_hyperparameters(self.ds.optimizer, lr, wd)
        self.ds.step()
        grad_norm = self.ds.get_global_grad_norm()
        grad_norm = math.nan if grad_norm is None else float(grad_norm)
        out = {"lr": lr, "grad_norm": grad_norm}
        if wd is not None:
            out["weight_decay"] = wd
        return out

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        return dist_utils.reduce_mean(values, self.device)

    def full_state_dict(self) -> dict[str, Any]:
        """The objective's state dict with every parameter in full fp32 (the optimizer's master copy, gathered
        from all ranks under ZeRO) — a collective: every rank must call it. Buffers and extra state (the
        teacher) as the module holds them."""
        from deepspeed.utils import safe_get_full_fp32_param

        names = {id(p): n for n, p in self.objective.named_parameters()}
        full = {}
        for p in self.objective.parameters():
            master = safe_get_full_fp32_param(p) if p.requires_grad else None
            if master is None:  # no master copy (fp32 ZeRO-0, frozen parameters): the parameter itself, gathered
                with self.gathered([p]):
                    master = p.detach().clone()
            full[names[id(p)]] = master.float().cpu()
        state = self.objective.state_dict()
        return {k: full.get(k, v.cpu() if torch.is_tensor(v) else v) for k, v in state.items()}

    def gathered(self, params: list[nn.Parameter]) -> contextlib.AbstractContextManager:
        if self.zero_stage == 3:
            from deepspeed.runtime.zero.partition_parameters import GatheredParameters

            return GatheredParameters(params)
        return contextlib.nullcontext()
