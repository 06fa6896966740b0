"""``train.compile``: regional ``torch.compile`` of the transformer blocks of a model, in place.

Each transformer block (:class:`unimim.nn.block.Block`, and timm's ``*Block`` modules of a timm backbone) is compiled
on its own (``nn.Module.compile``, inductor) rather than the whole objective: the code between blocks (masking,
``pred[mask]`` with its data-dependent count, the target construction, the logs) runs eagerly as before, so it
breaks no graph, and blocks of the same kind share their compiled code (one compilation per block variant: see
``compile_blocks``). The student's and the EMA teacher's blocks are both compiled; the weights, their names in the
state dict and the checkpoints are unchanged (``Module.compile`` wraps the call, not the module), so a run may be
resumed with or without it. What inductor fuses per block: layer norms, GELU, dropout, layer scale, drop path and
the residual adds around the matrix products.

Numerics: inductor reorders and fuses element-wise work, so losses agree with eager execution to rounding, not
bit for bit (tests/train/test_compile.py). The first step of each new input shape compiles (seconds to minutes
on a small CPU; a C++ compiler is needed on the CPU); the benchmarks report it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator

import torch
from torch import nn

from unimim.nn.block import Block

log = logging.getLogger(__name__)


def _roots(model: nn.Module) -> list[nn.Module]:
    """``model`` and, for a teacher-student objective, its EMA teacher's module (a plain attribute, not a child:
    unimim.objectives.teacher)."""
    teacher = getattr(getattr(model, "teacher", None), "module", None)
    return [model, teacher] if isinstance(teacher, nn.Module) else [model]


def compiled_units(model: nn.Module) -> Iterator[nn.Module]:
    """The modules of ``model`` (its EMA teacher's included) that ``compile_blocks`` compiles: unimim blocks and
    timm's ``*Block`` modules (outermost only: a block inside a compiled block is not compiled again)."""
    stack = _roots(model)
    while stack:
        module = stack.pop()
        for child in module.children():
            cls = type(child)
            if isinstance(child, Block) or (cls.__module__.startswith("timm.") and cls.__name__.endswith("Block")):
                yield child
            else:
                stack.append(child)


def check_compiler(device: torch.device) -> None:
    """On the CPU inductor builds C++ kernels: fail in one line before training when no compiler is found."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise RuntimeError("train.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH: install one "
                           "(Debian: apt-get install g++) or set train.compile=false")


def compile_blocks(model: nn.Module, device: torch.device | str = "cpu") -> int:
    """Compile every block of ``model`` in place (see the module docstring); return how many were compiled."""
    check_compiler(torch.device(device))
    units = list(compiled_units(model))
    if not units:
        raise ValueError(f"train.compile: {type(model).__name__} has no transformer blocks to compile")
    # Each block variant compiles separately: train / eval mode (the student / the EMA teacher), each input shape,
    # and each stochastic-depth rate (a constant of its block: the rates rise with depth). Room for all of them, so
    # no block silently falls back to eager execution past dynamo's default limit of 8 per code object.
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 8 * len(units))
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 32 * len(units))
    for unit in units:
        unit.compile()
    log.info("train.compile: %d blocks of %s compiled (inductor; the first step of each input shape compiles)",
             len(units), type(model).__name__)
    return len(units)
