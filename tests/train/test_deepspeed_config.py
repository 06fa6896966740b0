"""DeepSpeed engine, in-process parts: the JSON config generated from a recipe, user overrides and their conflicts,
the example configs (checked by DeepSpeed's own validator), the CLI argument, and clear errors before start-up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.config import ConfigError
from unimim.train.ds_engine import build_ds_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
EXAMPLES = sorted((ROOT / "recipes/deepspeed").glob("*.json"))


def cfg_with(*extra: str):
    return load_recipe(RECIPE, tiny_overrides("image", "data2vec") + ["deepspeed.enabled=true", *extra])


def test_generated_config_follows_the_recipe():
    cfg = cfg_with("train.batch_size=4", "train.accumulate=3", "optim.clip_grad=2.5", "deepspeed.zero_stage=3",
                   "train.precision=bf16")
    ds = build_ds_config(cfg, world_size=8)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 8
    assert ds["gradient_clipping"] == 2.5
    assert ds["zero_optimization"] == {"stage": 3}
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


def test_fp16_uses_dynamic_loss_scaling_and_no_clip_is_zero():
    ds = build_ds_config(cfg_with("train.precision=fp16", "optim.clip_grad=null"), world_size=1)
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0  # 0 = dynamic in DeepSpeed
    assert ds["fp16"]["initial_scale_power"] == 16 and not ds["bf16"]["enabled"]
    assert ds["gradient_clipping"] == 0.0


def _validate_with_deepspeed(ds: dict) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    DeepSpeedConfig(ds)  # raises on unknown keys, wrong types and inconsistent batch sizes (world of one)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_merge_and_pass_deepspeed_validation(example):
    user = json.loads(example.read_text())
    precision = "fp16" if user.get("fp16", {}).get("enabled") else "bf16"
    ds = build_ds_config(cfg_with(f"train.precision={precision}", f"deepspeed.config={example}"), world_size=1)
    for key, value in user["zero_optimization"].items():
        assert ds["zero_optimization"][key] == value  # user keys win (deep merge)
    assert ds["train_micro_batch_size_per_gpu"] == 8  # recipe keys kept
    _validate_with_deepspeed(ds)


def test_generated_configs_pass_deepspeed_validation():
    for precision in ("fp32", "bf16", "fp16"):
        for stage in range(4):
            _validate_with_deepspeed(build_ds_config(
                cfg_with(f"train.precision={precision}", f"deepspeed.zero_stage={stage}"), world_size=1))


def test_user_config_conflicting_with_the_recipe_is_refused(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": 32}))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=32 disagrees with the recipe's train.batch"):
        build_ds_config(cfg_with(f"deepspeed.config={user}"), world_size=2)
    with pytest.raises(ConfigError, match="fp16.enabled disagrees with train.precision='bf16'"):
        build_ds_config(cfg_with("train.precision=bf16", f"deepspeed.config={ROOT / 'recipes/deepspeed/fp16.json'}"),
                        world_size=1)
    user.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        build_ds_config(cfg_with(f"deepspeed.config={user}"), world_size=1)
    with pytest.raises(ConfigError, match="DeepSpeed config not found"):
        build_ds_config(cfg_with(f"deepspeed.config={tmp_path / 'missing.json'}"), world_size=1)


def test_bad_deepspeed_section_values_are_config_errors():
    with pytest.raises(ConfigError, match="zero_stage must be 0, 1, 2 or 3"):
        cfg_with("deepspeed.zero_stage=4")
    with pytest.raises(ConfigError, match="unknown config key 'deepspeed.stage'"):
        cfg_with("deepspeed.stage=2")


def test_cli_deepspeed_argument_enables_the_engine(monkeypatch):
    import unimim.app.pretrain as app_pretrain
    import unimim.train.run as run_mod
    from unimim.app.cli import main

    seen = {}

    def fake_pretrain(cfg, progress=True):
        seen["cfg"] = cfg
        return run_mod.PretrainResult(run_dir=cfg.run_dir, losses=[], start_step=0)

    monkeypatch.setattr(app_pretrain, "pretrain", fake_pretrain)
    zero3 = str(ROOT / "recipes/deepspeed/zero3.json")
    # --local_rank (passed by launchers that do not set LOCAL_RANK) is accepted and ignored
    assert main(["--local_rank=1", "pretrain", str(RECIPE), "--deepspeed", zero3, "deepspeed.zero_stage=3"]) == 0
    ds = seen["cfg"].deepspeed
    assert ds.enabled and ds.config == zero3 and ds.zero_stage == 3
    assert main(["pretrain", str(RECIPE)]) == 0 and not seen["cfg"].deepspeed.enabled


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU accelerator's fp16 support")
def test_fp16_on_the_cpu_accelerator_runs_where_supported_else_fails_before_start_up(tmp_path, monkeypatch):
    """Whether fp16 is refused is the accelerator's answer (an AVX-512 FP16 Xeon says yes, an AMD EPYC no): where it
    is supported a tiny fp16 run trains; where it is not, the run fails with the clear error before start-up."""
    from deepspeed.accelerator import get_accelerator

    from unimim.app.pretrain import pretrain

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    accel = get_accelerator()
    fp16 = ["train.precision=fp16", "train.steps=2"]

    def refused(out):
        with pytest.raises(ValueError, match="fp16 training is not supported by DeepSpeed's cpu accelerator"):
            pretrain(cfg_with(*fp16, f"train.out_dir={out}"), progress=False)
        assert not (out / "d2v_fmnist" / "deepspeed_config.json").exists()  # before the process group and engine

    if accel.is_fp16_supported():
        result = pretrain(cfg_with(*fp16, f"train.out_dir={tmp_path / 'fp16'}"), progress=False)
        assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
        ds = json.loads((result.run_dir / "deepspeed_config.json").read_text())
        assert ds["fp16"]["enabled"] and not ds["bf16"]["enabled"]
        monkeypatch.setattr(accel, "is_fp16_supported", lambda: False)  # the other machines' answer
    refused(tmp_path / "refused")
    with pytest.raises(ConfigError, match="train.device='cuda' but DeepSpeed's accelerator is 'cpu'"):
        pretrain(cfg_with("train.device=cuda", f"train.out_dir={tmp_path}"), progress=False)


def test_in_process_deepspeed_run_leaves_the_environment_unchanged(tmp_path, monkeypatch):
    """A world of one fills in the rendezvous variables for its own run only: a child process started afterwards
    (e.g. a launcher) must not inherit a MASTER_PORT this process still holds (EADDRINUSE)."""
    from unimim.app.pretrain import pretrain
    from unimim.train import distributed as dist_utils

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for k in dist_utils.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    before = dict(os.environ)
    result = pretrain(cfg_with("train.precision=fp32", "train.steps=1", f"train.out_dir={tmp_path}"), progress=False)
    assert len(result.losses) == 1
    assert dict(os.environ) == before


def test_stop_after_then_resume_continues_the_same_trajectory(tmp_path):
    """train.stop_after ends an invocation early (a time-limited job slice); the next one resumes on the same
    trajectory as an uninterrupted run (the schedule spans train.steps in both)."""
    from unimim.app.pretrain import pretrain
    from unimim.train.metrics import read_metrics

    common = tiny_overrides("image", "data2vec") + ["train.steps=3", "train.precision=fp32", "train.checkpoint_every=1"]
    straight = pretrain(load_recipe(RECIPE, common + [f"train.out_dir={tmp_path / 'a'}"]), progress=False)
    sliced = common + [f"train.out_dir={tmp_path / 'b'}"]
    first = pretrain(load_recipe(RECIPE, sliced + ["train.stop_after=2"]), progress=False)
    assert len(first.losses) == 2
    rest = pretrain(load_recipe(RECIPE, sliced), progress=False)
    assert rest.start_step == 2 and len(rest.losses) == 1
    assert [r["loss"] for r in read_metrics(straight.run_dir)] == [r["loss"] for r in read_metrics(rest.run_dir)]


AUTOCAST_SWITCHED_OFF = """
import sys, torch
from deepspeed.runtime import torch_autocast
# On CUDA DeepSpeed sees an autocast entered around its engine (torch.is_autocast_enabled() checks CUDA's) and
# switches it off inside its forward when its bf16 / fp16 sections are used. Make it see the CPU's the same way.
_enabled = torch.is_autocast_enabled
torch_autocast.torch.is_autocast_enabled = lambda *a: _enabled(*a) if a else _enabled("cpu")
from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
over = tiny_overrides("image", "data2vec") + ["deepspeed.enabled=true", "train.precision=bf16", "train.steps=2",
                                              "train.out_dir=" + sys.argv[1]]
result = pretrain(load_recipe(sys.argv[2], over), progress=False)
assert len(result.losses) == 2 and all(l == l for l in result.losses), result.losses
print("ok", result.losses)
"""


def test_bf16_engine_does_not_rely_on_an_autocast_around_deepspeed(tmp_path):
    """DeepSpeed's bf16 mode holds the student in bf16 and, on CUDA, switches off an autocast entered around its
    engine; the engine must enter it inside DeepSpeed's forward, or fp32 inputs meet bf16 weights (seen on an H100:
    "Input type (float) and bias type (c10::BFloat16) should be the same"). Simulated on the CPU accelerator."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", AUTOCAST_SWITCHED_OFF, str(tmp_path), str(RECIPE)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout


def test_per_parameter_clipping_is_refused_under_deepspeed():
    with pytest.raises(ConfigError, match="clip_mode=per_param"):
        build_ds_config(cfg_with("optim.clip_mode=per_param", "optim.clip_grad=3.0"), world_size=1)
    assert build_ds_config(cfg_with("optim.clip_mode=per_param", "optim.clip_grad=null"), world_size=1)
