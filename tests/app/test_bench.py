"""``unimim bench`` end to end on a tiny suite (seconds): two image methods and a two-stage entry (dVAE, then BEiT
on its tokenizer) under one budget, probed along the budget, fine-tuned, against random weights, from scratch and
raw pixels; the outputs; resuming (finished entries read back, a changed entry run again, never mixed); a failed
entry; the comparison of two entries; a launched stage."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import tiny_overrides
from unimim.app.bench import bench_run, compare_run, load_suite
from unimim.app.bench_entry import plan_entry, stage_config
from unimim.app.cli import main
from unimim.app.experiment import load_recipe
from unimim.app.recipes import recipe_names, resolve_recipe
from unimim.eval.compare import paired_bootstrap
from unimim.train.checkpoint import CHECKPOINT_NAME


def _entry(name: str, recipe: str, objective: str, directory: Path, **kw) -> dict:
    return {"name": name, "recipe": f"image/{recipe}", "overrides": tiny_overrides("image", objective, directory),
            **kw}


def _write(path: Path, suite: dict) -> Path:
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    dvae = tiny_overrides("image", "dvae", tmp)
    beit = [o for o in tiny_overrides("image", "beit", tmp) if not o.startswith("method.tokenizer=")]
    suite = {
        "name": "tiny", "out_dir": str(tmp / "out"), "budget": {"kind": "steps", "value": 4},
        "overrides": ["train.precision=fp32"],
        "evaluate": {"probe": True, "probe_points": 2, "finetune": True, "baselines": True},
        "entries": [
            _entry("d2v2", "data2vec2_fmnist_cpu", "data2vec2", tmp),
            _entry("mae", "mae_fmnist_cpu", "mae", tmp),
            {"name": "beit", "finetune": False, "stages": [
                {"name": "dvae", "recipe": "image/dvae_fmnist_cpu", "overrides": dvae, "share": 0.5},
                {"name": "beit", "recipe": "image/beit_fmnist_cpu", "overrides": [*beit, "method.tokenizer={dvae}"]}]},
        ],
    }
    path = _write(tmp / "suite.yaml", suite)
    results = bench_run(load_suite(path), progress=False)
    return tmp, path, suite, results


def test_every_entry_is_pretrained_under_the_budget_and_evaluated(suite_run):
    tmp, _, _, results = suite_run
    rows = {r["name"]: r for r in results["entries"]}
    assert [r["status"] for r in rows.values()] == ["done"] * 3
    d2v2 = rows["d2v2"]
    recipe = load_recipe("image/data2vec2_fmnist_cpu", tiny_overrides("image", "data2vec2", tmp))
    assert d2v2["steps"] == 4 and d2v2["stages"]["pretrain"]["recipe_steps"] == recipe.train.steps
    cfg = yaml.safe_load((tmp / "out/tiny/d2v2/pretrain/config.yaml").read_text())
    factor = 4 / recipe.train.steps  # the schedule stretched to the budget
    assert cfg["train"]["steps"] == 4
    assert cfg["optim"]["warmup_steps"] == max(1, round(recipe.optim.warmup_steps * factor))
    assert cfg["method"]["ema"]["anneal_steps"] == max(1, round(recipe.method.ema.anneal_steps * factor))
    # the budget shared by two stages: 2 steps each
    assert rows["beit"]["stages"]["dvae"]["steps"] == 2 and rows["beit"]["steps"] == 2
    assert rows["beit"]["train_seconds"] == pytest.approx(
        rows["beit"]["stages"]["dvae"]["elapsed_s"] + rows["beit"]["stages"]["beit"]["elapsed_s"], abs=0.02)
    for r in rows.values():
        assert r["train_seconds"] > 0 and r["train_flops"] > 0
        assert [p["step"] for p in r["curve"]] == ([2, 4] if r["name"] != "beit" else [1, 2])
        assert r["curve"][0]["flops"] < r["curve"][1]["flops"] and r["loss"]
        probe = r["probe"]
        assert probe["task"] == "synthetic" and probe["gain"]["low"] <= probe["gain"]["diff"] <= probe["gain"]["high"]
        assert probe["pretrained"]["linear"] == r["curve"][-1]["linear"]
        assert probe["vs_raw"] is not None
    # MAE's step (the encoder sees a quarter of the patches) costs fewer FLOPs than data2vec 2.0's (4 masks)
    assert rows["mae"]["train_flops"] < rows["d2v2"]["train_flops"]
    assert rows["d2v2"]["finetune"]["metric"] == "top1" and rows["beit"]["finetune"] is None
    assert rows["mae"]["finetune"]["gain"]["low"] <= rows["mae"]["finetune"]["gain"]["diff"]
    assert list(results["baselines"]) == ["image/synthetic"]


def test_gains_are_recomputed_from_the_stored_predictions(suite_run):
    tmp, _, _, results = suite_run
    row = next(r for r in results["entries"] if r["name"] == "mae")
    probe = json.loads(Path(row["probe"]["file"]).read_text())
    p = probe["predictions"]
    labels = torch.tensor(p["labels"])
    acc = (torch.tensor(p["pretrained"]) == labels).float().mean().item()
    assert acc == pytest.approx(row["probe"]["pretrained"]["linear"])
    baseline = json.loads(next((tmp / "out/tiny/baselines").glob("image-*.json")).read_text())
    again = paired_bootstrap(torch.tensor(p["pretrained"]) == labels, torch.tensor(baseline["predictions"]) == labels)
    assert again["diff"] == pytest.approx(row["probe"]["vs_raw"]["diff"])
    assert row["probe"]["vs_raw"]["diff"] == pytest.approx(acc - baseline["linear"])


def test_outputs_table_csv_and_plots(suite_run):
    tmp, _, _, results = suite_run
    out = tmp / "out/tiny"
    md = (out / "results.md").read_text()
    for name in ("d2v2", "mae", "beit", "raw"):
        assert name in md
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["name"] for r in rows] == ["d2v2", "mae", "beit"]
    mae = next(r for r in results["entries"] if r["name"] == "mae")
    assert float(rows[1]["probe_linear"]) == pytest.approx(mae["probe"]["pretrained"]["linear"])
    for png in ("probe_vs_time.png", "probe_vs_flops.png", "finetune.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["entries"][0]["name"] == "d2v2"
    probe_cmp = [c for c in results["comparisons"] if c["evaluation"] == "probe"]
    assert len(probe_cmp) == 2 and all(c["low"] <= c["diff"] <= c["high"] for c in probe_cmp)
    text = compare_run(load_suite(tmp / "suite.yaml"), "d2v2", "mae")
    assert text.startswith("probe (linear accuracy), d2v2 - mae:") and "finetune (top1)" in text


def test_resume_reuses_finished_entries_and_reruns_a_changed_one(suite_run, caplog):
    tmp, _, suite, results = suite_run
    out = tmp / "out/tiny"
    stamps = {n: (out / n / "pretrain" / CHECKPOINT_NAME).stat().st_mtime_ns for n in ("d2v2", "mae")}
    changed = json.loads(json.dumps(suite))
    changed["entries"][1]["overrides"].append("masking.ratio=0.5")
    again = bench_run(load_suite(_write(tmp / "changed.yaml", changed)), progress=False)
    assert (out / "d2v2" / "pretrain" / CHECKPOINT_NAME).stat().st_mtime_ns == stamps["d2v2"]  # read back
    assert (out / "mae" / "pretrain" / CHECKPOINT_NAME).stat().st_mtime_ns != stamps["mae"]    # run again
    old = list((out / "replaced").glob("mae-*"))
    assert len(old) == 1 and (old[0] / "result.json").is_file()  # the earlier result kept aside, not mixed
    rows = {r["name"]: r for r in again["entries"]}
    assert rows["d2v2"]["probe"] == next(r for r in results["entries"] if r["name"] == "d2v2")["probe"]
    cfg = yaml.safe_load((out / "mae" / "pretrain" / "config.yaml").read_text())
    assert cfg["masking"]["ratio"] == 0.5


def test_an_interrupted_entry_continues_from_its_checkpoint(tmp_path):
    suite = {"name": "cut", "out_dir": str(tmp_path / "out"), "budget": {"kind": "samples", "value": 64},
             "overrides": ["train.precision=fp32"],
             "evaluate": {"probe": True, "probe_points": 2, "finetune": False, "baselines": False},
             "entries": [_entry("mae", "mae_fmnist_cpu", "mae", tmp_path)]}
    path = _write(tmp_path / "suite.yaml", suite)
    # a stage stopped half-way (as after a preemption): the first slice only
    from unimim.app.bench_entry import StageRunner, _budget_overrides, _resolve_steps, plan_entry, write_json

    s = load_suite(path)
    plan = plan_entry(s, s.entries[0], tmp_path / "out" / "cut")
    resolved = _resolve_steps(plan, plan.last, 1.0, StageRunner(s, False))
    assert resolved["steps"] == 64 // resolved["examples_per_step"]
    write_json(plan.dir / "entry.json", {"fingerprint": plan.fingerprint, "stages": {"pretrain": resolved}})
    StageRunner(s, False)(plan, plan.last, [*_budget_overrides(plan, plan.last, resolved), "train.stop_after=1"])
    results = bench_run(s, progress=False)
    row = results["entries"][0]
    assert row["status"] == "done" and row["steps"] == resolved["steps"]
    steps = [m["step"] for m in row["loss"]]
    assert steps == sorted(set(steps))  # each step logged once across the two invocations
    # the entry run again once its stage is complete (as after a failed fine-tune): the probe points of the earlier
    # invocations are read back at their own steps, not all taken at the final checkpoint
    from unimim.app.bench_entry import probe_targets

    (plan.dir / "result.json").unlink()
    again = bench_run(s, progress=False)["entries"][0]
    assert [p["step"] for p in row["curve"]] == probe_targets(resolved["steps"], 2)
    assert again["curve"] == row["curve"]


def test_a_failed_entry_is_recorded_and_the_others_run(tmp_path, capsys):
    suite = {"name": "fail", "out_dir": str(tmp_path / "out"), "budget": {"kind": "steps", "value": 2},
             "overrides": ["train.precision=fp32"],
             "evaluate": {"probe": False, "finetune": False, "baselines": False},
             "entries": [
                 {"name": "broken", "stages": [{"name": "dvae", "recipe": "image/dvae_fmnist_cpu",
                                                "overrides": tiny_overrides("image", "dvae", tmp_path),
                                                "share": 0.5},
                                               {"name": "beit", "recipe": "image/beit_fmnist_cpu",
                                                "overrides": [*tiny_overrides("image", "beit", tmp_path),
                                                              f"method.tokenizer={tmp_path / 'nowhere'}"]}]},
                 _entry("mae", "mae_fmnist_cpu", "mae", tmp_path)]}
    path = _write(tmp_path / "suite.yaml", suite)
    assert main(["bench", str(path), "--no-progress"]) == 1
    rows = {r["name"]: r for r in json.loads((tmp_path / "out/fail/results.json").read_text())["entries"]}
    assert rows["mae"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and "nowhere" in rows["broken"]["error"]
    assert "\n" not in rows["broken"]["error"]
    assert "broken" in capsys.readouterr().out


def test_a_seconds_budget_becomes_steps_by_the_measured_step_cost(tmp_path):
    suite = {"name": "sec", "out_dir": str(tmp_path / "out"), "budget": {"kind": "seconds", "value": 3},
             "overrides": ["train.precision=fp32"],
             "evaluate": {"probe": False, "finetune": False, "baselines": False},
             "entries": [_entry("mae", "mae_fmnist_cpu", "mae", tmp_path)]}
    results = bench_run(load_suite(_write(tmp_path / "suite.yaml", suite)), progress=False)
    stage = results["entries"][0]["stages"]["pretrain"]
    cost = stage["cost"]
    assert cost["seconds_per_step"] > 0 and stage["steps"] == max(1, int(3 / cost["seconds_per_step"]))
    cfg = yaml.safe_load((tmp_path / "out/sec/mae/pretrain/config.yaml").read_text())
    assert cfg["train"]["max_seconds"] == pytest.approx(3 * 1.25)


def test_a_launched_stage_runs_in_another_process(tmp_path):
    suite = {"name": "launch", "out_dir": str(tmp_path / "out"), "budget": {"kind": "steps", "value": 2},
             "overrides": ["train.precision=fp32"], "launch": {"command": "env OMP_NUM_THREADS=1", "deepspeed": False},
             "evaluate": {"probe": False, "finetune": False, "baselines": False},
             "entries": [_entry("mae", "mae_fmnist_cpu", "mae", tmp_path)]}
    results = bench_run(load_suite(_write(tmp_path / "suite.yaml", suite)), progress=False)
    assert results["entries"][0]["status"] == "done" and results["entries"][0]["stages"]["pretrain"]["step"] == 2


@pytest.mark.parametrize("name", [n for n in recipe_names() if n.startswith("bench/")])
def test_every_shipped_suite_resolves(name, tmp_path):
    """Each shipped suite loads strictly, its stages' recipes resolve with their overrides, its fine-tune recipes
    exist, and its entries are fingerprinted (nothing runs)."""
    suite = load_suite(name)
    for entry in suite.entries:
        plan = plan_entry(suite, entry, tmp_path)
        assert len(plan.fingerprint) == 16
        cfg = stage_config(plan, plan.last)
        assert cfg.run_dir == tmp_path / entry.name / plan.last.name
    for recipe in suite.evaluate.finetune_recipes.values():
        assert resolve_recipe(recipe).is_file()
    assert load_suite("bench/image_methods_cpu").entry("beit").shares() == [0.4, 0.6]
