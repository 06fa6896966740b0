"""No file a run reads is unpickled beyond tensors and plain data.

Every path that reads a checkpoint or a tokenizer is handed a crafted pickle whose unpickling would create a marker
file (``__reduce__`` -> ``pathlib.Path.touch``): run resume, probe, reconstruct, the BEiT tokenizer, DeepSpeed
resume (our per-tag files and DeepSpeed's own). Each must refuse it with a clear one-line error and leave no marker.
Beside that: the format-2 pair (RNG states restored exactly, steps checked in both files) and a real version-1
``checkpoint.pt`` (the old layout, numpy RNG arrays included), which resumes on the same trajectory.
"""

from __future__ import annotations

import logging
import pathlib
import random
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.train.checkpoint import (
    CHECKPOINT_NAME,
    LEGACY_CHECKPOINT_NAME,
    TRAINING_STATE_NAME,
    UnsafeFileError,
    load_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
REFUSED = r"refused to read .*: it holds a Python object other than tensors and plain data \(it names "


class Touch:
    """Unpickling this creates ``marker``: the stand-in for a payload that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def craft(path: Path, marker: Path) -> Path:
    """A pickle at ``path`` (in the layout a reader expects) that creates ``marker`` when unpickled."""
    payload = {"version": 1, "format": "unimim-checkpoint", "step": 1, "model": {"w": Touch(marker)},
               "config": {}, "state_dict": {}}
    torch.save(payload, path)
    assert not marker.exists()
    return path


def _tiny(recipe: str, out: Path, *extra: str):
    cfg = load_recipe(ROOT / "recipes/image" / recipe)
    return load_recipe(ROOT / "recipes/image" / recipe,
                       tiny_overrides(cfg.modality, cfg.objective, out) + [f"train.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory) -> Path:
    """A finished 2-step MAE run (MAE: also what ``unimim reconstruct`` draws)."""
    out = tmp_path_factory.mktemp("mae")
    return pretrain(_tiny("mae_fmnist_cpu.yaml", out, "train.steps=2"), progress=False).run_dir


@pytest.fixture
def run_copy(mae_run, tmp_path) -> Path:
    dest = tmp_path / "out" / mae_run.name
    shutil.copytree(mae_run, dest)
    return dest


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


# --- format 2: the pair, RNG states ---------------------------------------------------------------------------------

def test_rng_states_are_plain_data_and_a_restored_run_draws_the_same_numbers(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # one of a pair drawn: both generators cache the second
    model = torch.nn.Linear(2, 2)
    write_checkpoint(tmp_path, model_state=model.state_dict(), engine_state={}, step=5, config={"a": [1, 2]})
    uninterrupted = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
                     np.random.randint(0, 10**9), torch.rand(3).tolist())
    # the file needs no allowlist at all: plain torch.load(weights_only=True) reads it
    raw = torch.load(tmp_path / TRAINING_STATE_NAME, weights_only=True)
    assert raw["rng"]["numpy"]["has_gauss"] == 1 and raw["rng"]["python"]["gauss_next"] is not None
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # another process, another state
    ckpt = load_checkpoint(tmp_path)
    set_rng_state(ckpt["rng"])
    resumed = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
               np.random.randint(0, 10**9), torch.rand(3).tolist())
    assert resumed == uninterrupted
    assert ckpt["step"] == 5 and ckpt["config"] == {"a": [1, 2]}
    assert torch.equal(ckpt["model"]["weight"], model.weight.detach())


def test_the_state_of_an_extra_state_round_trips(tmp_path):
    state = {"w": torch.arange(4.0), "t._extra_state": {"teacher": {"x": torch.ones(2)}, "num_updates": 7,
                                                         "usage": float("nan"), "pair": (1, "a"), "none": None}}
    write_checkpoint(tmp_path / "m.safetensors", model_state=state, engine_state={}, step=1, config={})
    back = load_checkpoint(tmp_path / "m.safetensors")["model"]
    extra = back["t._extra_state"]
    assert torch.equal(back["w"], state["w"]) and torch.equal(extra["teacher"]["x"], torch.ones(2))
    assert extra["num_updates"] == 7 and extra["pair"] == (1, "a") and extra["none"] is None
    assert extra["usage"] != extra["usage"]  # NaN


def test_a_pair_of_different_steps_or_half_a_pair_is_refused(tmp_path):
    state = {"w": torch.zeros(1)}
    write_checkpoint(tmp_path / "a", model_state=state, engine_state={}, step=1, config={})
    write_checkpoint(tmp_path / "b", model_state=state, engine_state={}, step=2, config={})
    shutil.copy(tmp_path / "b" / TRAINING_STATE_NAME, tmp_path / "a" / TRAINING_STATE_NAME)
    with pytest.raises(RuntimeError, match=r"checkpoint pair mismatch: .*model.safetensors is of step 1, "
                                           r".*training_state.pt of step 2") as e:
        load_checkpoint(tmp_path / "a")
    _one_line(e)
    (tmp_path / "b" / TRAINING_STATE_NAME).unlink()
    with pytest.raises(RuntimeError, match=r"checkpoint incomplete: .*model.safetensors has no training_state.pt"):
        load_checkpoint(tmp_path / "b")


# --- format 1: a real checkpoint.pt of the old layout -------------------------------------------------------------

def _legacy_rng(plain: dict) -> dict:
    """The version-1 layout of the RNG states: Python's tuple, numpy's ``get_state()`` tuple (an ndarray)."""
    py, npy = plain["python"], plain["numpy"]
    return {"python": (py["version"], tuple(py["internal"]), py["gauss_next"]),
            "numpy": (npy["bit_generator"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                      npy["cached_gaussian"]),
            "torch": plain["torch"]}


def test_a_version1_checkpoint_is_read_weights_only_and_resumes_on_the_same_trajectory(tmp_path, monkeypatch):
    common = ["train.steps=3", "train.precision=fp32"]  # data2vec: an EMA teacher in the extra state
    straight = pretrain(_tiny("data2vec_fmnist_cpu.yaml", tmp_path / "a", *common), progress=False)
    first = pretrain(_tiny("data2vec_fmnist_cpu.yaml", tmp_path / "b", *common, "train.stop_after=1"),
                     progress=False)
    run = first.run_dir
    new = load_checkpoint(run)
    old = {"version": 1, "step": new["step"], "model": new["model"], "engine": new["engine"],
           "rng": _legacy_rng(new["rng"]), "config": new["config"]}
    torch.save(old, run / LEGACY_CHECKPOINT_NAME)  # what version 1 wrote
    (run / CHECKPOINT_NAME).unlink()
    (run / TRAINING_STATE_NAME).unlink()
    monkeypatch.setattr(torch, "load", _weights_only_load_only(torch.load))  # nothing may read it otherwise

    resumed = pretrain(_tiny("data2vec_fmnist_cpu.yaml", tmp_path / "b", *common), progress=False)
    assert resumed.start_step == 1 and len(resumed.losses) == 2
    losses = [[r["loss"] for r in read_metrics(d)] for d in (straight.run_dir, resumed.run_dir)]
    assert losses[0] == losses[1]  # bit-identical on CPU in fp32: weights, optimizer and RNG states restored
    a, b = load_checkpoint(straight.run_dir)["model"], load_checkpoint(resumed.run_dir)["model"]
    assert load_checkpoint(resumed.run_dir)["version"] == 2  # the next save wrote the new pair
    for k in a:
        if k.endswith("_extra_state"):
            assert all(torch.equal(v, b[k]["teacher"][n]) for n, v in a[k]["teacher"].items())
        else:
            assert torch.equal(a[k], b[k]), k


def _weights_only_load_only(real):
    def load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "a torch.load without weights_only=True"
        return real(*args, **kwargs)

    return load


# --- crafted pickles on every path ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [TRAINING_STATE_NAME, CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME])
def test_resume_refuses_a_crafted_pickle(run_copy, tmp_path, target):
    marker = tmp_path / "pwned"
    if target == LEGACY_CHECKPOINT_NAME:  # a run directory of format 1
        (run_copy / CHECKPOINT_NAME).unlink()
        (run_copy / TRAINING_STATE_NAME).unlink()
    craft(run_copy / target, marker)
    cfg = _tiny("mae_fmnist_cpu.yaml", run_copy.parent, "train.steps=4")
    match = "not a safetensors file" if target == CHECKPOINT_NAME else REFUSED
    with pytest.raises(RuntimeError, match=match) as e:
        pretrain(cfg, progress=False)
    _one_line(e)
    assert not marker.exists()


def test_the_cli_reports_a_refused_checkpoint_in_one_line(run_copy, tmp_path, caplog):
    from unimim.app.cli import main

    marker = tmp_path / "pwned"
    craft(run_copy / TRAINING_STATE_NAME, marker)
    args = tiny_overrides("image", "mae") + [f"train.out_dir={run_copy.parent}", "train.steps=4"]
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", str(ROOT / "recipes/image/mae_fmnist_cpu.yaml"), *args, "--no-progress"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "refused to read" in errors[0], errors
    assert not marker.exists()


@pytest.mark.parametrize("target", [TRAINING_STATE_NAME, LEGACY_CHECKPOINT_NAME])
def test_probe_and_reconstruct_refuse_a_crafted_pickle(run_copy, tmp_path, target):
    from unimim.app.probe import load_pretrained, load_run_config
    from unimim.app.reconstruct import reconstruct_run

    marker = tmp_path / "pwned"
    if target == LEGACY_CHECKPOINT_NAME:
        (run_copy / CHECKPOINT_NAME).unlink()
        (run_copy / TRAINING_STATE_NAME).unlink()
    craft(run_copy / target, marker)
    with pytest.raises(UnsafeFileError, match=REFUSED) as e:
        load_pretrained(run_copy, load_run_config(run_copy), torch.device("cpu"))
    _one_line(e)
    with pytest.raises(UnsafeFileError, match=REFUSED):
        reconstruct_run(run_copy, num=2, out=tmp_path / "r.png")
    assert not marker.exists() and not (tmp_path / "r.png").exists()


def test_probe_reads_the_pair_of_a_clean_run(run_copy):
    from unimim.app.probe import load_pretrained, load_run_config

    model = load_pretrained(run_copy, load_run_config(run_copy), torch.device("cpu"))
    saved = load_checkpoint(run_copy)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if torch.is_tensor(v))


def _beit_with(tokenizer: str):
    from modalities.image.model.adapter import ImageAdapter, ImageAdapterConfig
    from modalities.image.objectives.beit import BEiT, BEiTConfig
    from unimim.nn.encoder import EncoderConfig, TransformerEncoder

    acfg = ImageAdapterConfig(image_size=16, patch_size=4, in_chans=1, positions="relative")
    return BEiT(ImageAdapter(acfg, dim=16, num_heads=2), TransformerEncoder(EncoderConfig(dim=16, depth=1,
                num_heads=2)), BEiTConfig(tokenizer=tokenizer))


@pytest.mark.parametrize("name", ["tokenizer.pt", "tokenizer.safetensors", "run"])
def test_the_beit_tokenizer_refuses_a_crafted_pickle(tmp_path, name):
    marker = tmp_path / "pwned"
    if name == "run":  # a dVAE run directory whose training state is crafted
        target = tmp_path / "dvae_run"
        write_checkpoint(target, model_state={"w": torch.zeros(1)}, engine_state={}, step=1, config={})
        craft(target / TRAINING_STATE_NAME, marker)
    else:
        target = craft(tmp_path / name, marker)
    match = "not a safetensors file" if name.endswith(".safetensors") else REFUSED
    with pytest.raises(RuntimeError, match=match) as e:
        _beit_with(str(target))
    _one_line(e)
    assert not marker.exists()


def test_the_beit_tokenizer_loads_from_safetensors_and_a_version1_file(tmp_path):
    from modalities.image.objectives.beit import tiny_tokenizer
    from modalities.image.objectives.tokenizer.dvae import load_tokenizer

    path = tiny_tokenizer(tmp_path)
    assert path.suffix == ".safetensors"
    tok = load_tokenizer(path)
    v1 = {"format": "unimim-dvae", "version": 1, "config": vars(tok.cfg).copy(), "state_dict": tok.state_dict()}
    torch.save(v1, tmp_path / "tokenizer.pt")
    old = load_tokenizer(tmp_path / "tokenizer.pt")
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(old.codes(x), tok.codes(x))
    assert torch.equal(_beit_with(str(path)).tokenize(x), tok.codes(x))


# --- DeepSpeed ------------------------------------------------------------------------------------------------------

def test_the_deepspeed_checkpoint_engine_loads_weights_only(tmp_path):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from unimim.train.ds_checkpoint import WeightsOnlyCheckpointEngine

    engine = WeightsOnlyCheckpointEngine(TorchCheckpointEngine())
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeFileError, match=REFUSED) as e:
        engine.load(str(craft(tmp_path / "mp_rank_00_model_states.pt", marker)), map_location="cpu")
    _one_line(e)
    assert not marker.exists()
    # what DeepSpeed's ZeRO optimizers do store beside tensors: their loss scaler object and the stage enum
    engine.save({"loss_scaler": LossScaler(8.0), "zero_stage": ZeroStageEnum(2), "t": torch.ones(2)},
                str(tmp_path / "optim.pt"))
    back = engine.load(str(tmp_path / "optim.pt"), map_location="cpu")
    assert back["loss_scaler"].cur_scale == 8.0 and back["zero_stage"] == ZeroStageEnum(2)
    assert engine.name == "TorchCheckpointEngine"  # everything else is DeepSpeed's engine


@pytest.mark.parametrize("target", ["unimim.pt", "rng_rank0.pt"])
def test_deepspeed_resume_refuses_a_crafted_per_tag_file(tmp_path, target):
    from unimim.train.checkpoint import atomic_save
    from unimim.train.ds_checkpoint import DeepSpeedCheckpoints

    tag = tmp_path / "deepspeed" / "step2"
    tag.mkdir(parents=True)
    (tmp_path / "deepspeed" / "latest").write_text("step2")
    atomic_save({"version": 2, "step": 2, "config": {}, "world_size": 1, "extra_state": {}}, tag / "unimim.pt")
    atomic_save(rng_state(), tag / "rng_rank0.pt")
    marker = tmp_path / "pwned"
    craft(tag / target, marker)
    ds = types.SimpleNamespace(checkpoint_engine=object(), load_universal_checkpoint=lambda: False,
                               load_checkpoint=lambda *a, **k: pytest.fail("DeepSpeed's load was reached"))
    engine = types.SimpleNamespace(ds=ds, rank=0, world_size=1, objective=torch.nn.Linear(1, 1))
    store = DeepSpeedCheckpoints(engine, tmp_path, config={})
    if target == "unimim.pt":
        with pytest.raises(UnsafeFileError, match=REFUSED):
            store.resume(lambda saved, current: None)
    else:
        ds.load_checkpoint = lambda *a, **k: (str(tag), {})
        with pytest.raises(UnsafeFileError, match=REFUSED):
            store.resume(lambda saved, current: None)
    assert not marker.exists()


def test_deepspeed_resume_refuses_a_crafted_deepspeed_file(tmp_path, monkeypatch):
    """A real DeepSpeed run (one process, ZeRO-2, CPU accelerator) whose module states file is swapped for a
    crafted pickle: DeepSpeed's own load goes through the weights-only engine."""
    from unimim.train import distributed as dist_utils

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for k in dist_utils.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    over = ["deepspeed.enabled=true", "deepspeed.zero_stage=2", "train.precision=fp32", "train.steps=3",
            "train.checkpoint_every=1", "train.threads=1"]
    first = pretrain(_tiny("data2vec_fmnist_cpu.yaml", tmp_path, *over, "train.stop_after=1"), progress=False)
    (states,) = (first.run_dir / "deepspeed" / "step1").glob("mp_rank_*_model_states.pt")
    marker = tmp_path / "pwned"
    craft(states, marker)
    with pytest.raises(UnsafeFileError, match=REFUSED) as e:
        pretrain(_tiny("data2vec_fmnist_cpu.yaml", tmp_path, *over), progress=False)
    _one_line(e)
    assert not marker.exists()
