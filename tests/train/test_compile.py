"""``train.compile``: every transformer block of student and teacher is compiled in place; a compiled pretraining
run's losses, weights and counted FLOPs agree with the eager run's; the checkpoint is the same file layout (a run
resumes across the switch); a missing C++ compiler is a one-line error before training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.app.registry import build_objective
from unimim.nn.block import Block
from unimim.train.compile import compile_blocks, compiled_units
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "image" / "data2vec_fmnist_cpu.yaml"


def _tiny(tmp_path: Path, *extra: str):
    cfg = load_recipe(RECIPE)
    # fp32 so the comparison is to rounding; drop path > 0 so the blocks differ in their rate (one compilation each)
    return load_recipe(RECIPE, [*tiny_overrides(cfg.modality, cfg.objective, tmp_path), f"train.out_dir={tmp_path}",
                                "train.precision=fp32", "train.num_workers=0", "encoder.drop_path=0.2", *extra])


def test_the_blocks_of_student_and_teacher_are_the_compiled_units(tmp_path):
    cfg = _tiny(tmp_path)
    objective = build_objective(cfg)
    units = list(compiled_units(objective))
    blocks = [m for part in (objective, objective.teacher.module) for m in part.modules() if isinstance(m, Block)]
    assert len(blocks) == 2 * cfg.encoder.depth  # the student's and the EMA teacher's (not a child module)
    assert {id(m) for m in units} == {id(m) for m in blocks}
    keys = list(objective.state_dict())
    assert compile_blocks(objective) == len(blocks)
    assert list(objective.state_dict()) == keys  # Module.compile wraps the call: names unchanged


def test_a_compiled_run_matches_the_eager_run(tmp_path, monkeypatch):
    # inductor draws random numbers its own way unless told to use eager's generator: with it, the drop-path masks
    # of both runs are the same draws, and the two runs differ only by the compiled arithmetic
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    eager = pretrain(_tiny(tmp_path / "eager", "train.steps=4", "train.stop_after=3"), progress=False)
    compiled = pretrain(_tiny(tmp_path / "compiled", "train.steps=4", "train.stop_after=3", "train.compile=true"),
                        progress=False)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4, abs=1e-6)
    assert [r["flops"] for r in read_metrics(compiled.run_dir)] == [r["flops"] for r in read_metrics(eager.run_dir)]
    with safe_open(eager.run_dir / "model.safetensors", "pt") as a, \
            safe_open(compiled.run_dir / "model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        worst = max((a.get_tensor(k).float() - b.get_tensor(k).float()).abs().max().item() for k in a.keys())
    assert worst < 1e-4
    # the switch is a runtime setting: the compiled run's last step runs eagerly
    resumed = pretrain(_tiny(tmp_path / "compiled", "train.steps=4"), progress=False)
    assert resumed.start_step == 3 and len(resumed.losses) == 1


def test_no_cpp_compiler_is_a_one_line_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(RuntimeError, match=r"train.compile on the CPU needs a C\+\+ compiler") as e:
        pretrain(_tiny(tmp_path, "train.steps=2", "train.compile=true"), progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / _tiny(tmp_path).name / "model.safetensors").exists()
