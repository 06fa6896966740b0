"""``unimim bench SUITE.yaml [key=value ...]``: every entry of a suite pretrained under one budget, then each
evaluated against the same architecture at random weights (probes), from-scratch fine-tuning and the raw-input
baseline of its modality, on the same splits; one table.

    SUITE_DIR = out_dir/name/
        results.md  results.csv  results.json   the table (terminal and GitHub), flat rows, everything
        probe_vs_time.png  probe_vs_flops.png  finetune.png  loss_curves.png
        <entry>/                                 one entry (:mod:`unimim.app.bench_entry`)
        baselines/<modality>_<task>-<hash>.json  the raw-input baseline of a probe task

Entries run one after another in this process (or, with ``launch:``, each pretraining stage under a launcher such
as DeepSpeed's on many machines; evaluations stay here). A suite resumes: a finished entry is read back, an
interrupted one continues from its checkpoint, a changed one runs again. An entry that fails is recorded with its
one-line error and the suite goes on; the command then exits 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

import unimim
from unimim.app.bench_entry import (
    EntryPlan,
    check_stage_recipes,
    finished_result,
    plan_entry,
    read_json,
    run_entry,
    stage_config,
    write_json,
)
from unimim.app.recipes import find_recipe, resolve_recipe
from unimim.config import ConfigError, load_config, read_yaml, to_dict
from unimim.eval.bench.suite import Suite
from unimim.eval.compare import paired_bootstrap
from unimim.eval.finetune.evaluate import MAIN_METRIC, compare_inits
from unimim.train.interrupt import TrainingInterrupted
from unimim.train.run_dir import OutputError, locked, make_run_dir

log = logging.getLogger(__name__)

BASELINE_DIR = "baselines"


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    """A suite file or a shipped suite's name (``bench/image_methods_cpu``) + ``key.sub=value`` overrides."""
    file = resolve_recipe(path)
    return load_config(read_yaml(file, find_recipe), lambda raw: Suite, overrides)


def suite_dir(suite: Suite) -> Path:
    return Path(suite.out_dir) / suite.name


def machine() -> dict[str, Any]:
    """What the numbers were measured on (named with every figure)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "unimim": unimim.__version__,
           "device": "cpu"}
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name(0)
    return out


# ---- evaluation summaries -------------------------------------------------------------------------------------

def _probe_summary(probe: dict[str, Any], baseline: dict[str, Any] | None, task: str, seed: int) -> dict[str, Any]:
    rows = {r["encoder"]: {"linear": r["linear"], "knn": r["knn"]} for r in probe["results"]}
    out = {"task": task, "num_test": probe["num_test"], "step": probe.get("step"), **rows,
           "gain": probe["linear_gain"], "vs_raw": None}
    preds = probe.get("predictions")
    if baseline is not None and preds is not None:
        if baseline["labels"] != preds["labels"]:
            log.warning("%s: the raw-input baseline was evaluated on other test examples; no paired comparison", task)
        else:
            labels = torch.tensor(preds["labels"])
            out["vs_raw"] = paired_bootstrap(torch.tensor(preds["pretrained"]) == labels,
                                             torch.tensor(baseline["predictions"]) == labels, seed=seed)
    return out


def _finetune_summary(ft: dict[str, Any]) -> dict[str, Any]:
    kind = ft["task"]["kind"]
    metric, better = MAIN_METRIC[kind]
    res = ft["results"]
    return {"task": ft["task"]["name"], "metric": metric, "higher_is_better": better == "higher",
            "num_test": ft["task"]["num_test"], "pretrained": res["pretrained"][metric],
            "random": res.get("random", {}).get(metric),
            "train_seconds": {k: v.get("train_seconds") for k, v in res.items()},
            "gain": ft.get("difference"), "files": ft.get("files", {})}


def _loss_points(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The loss curve of the evaluated stage, its time and FLOPs counted from the entry's start."""
    stages = list(result["stages"].values())
    before = {"elapsed_s": sum(s["elapsed_s"] for s in stages[:-1]), "flops": sum(s["flops"] for s in stages[:-1])}
    return [{"step": m["step"], "loss": m["loss"], "elapsed_s": before["elapsed_s"] + m.get("elapsed_s", 0.0),
             "flops": before["flops"] + m.get("flops", 0.0)} for m in stages[-1]["metrics"] if "loss" in m]


def summarise_entry(result: dict[str, Any], baseline: dict[str, Any] | None, task_key: str | None,
                    seed: int = 0) -> dict[str, Any]:
    """An entry's row of results.json from its raw result (:func:`~unimim.app.bench_entry.run_entry`)."""
    stages = list(result["stages"].values())
    last = stages[-1]
    out = {"name": result["name"], "modality": result["modality"], "objective": result["objective"],
           "recipe": result["recipe"], "status": "done", "task_key": task_key,
           "steps": last["steps"], "samples": None,
           "train_seconds": round(sum(s["elapsed_s"] for s in stages), 2),
           "train_flops": sum(s["flops"] for s in stages),
           "stages": {name: {k: s.get(k) for k in ("steps", "recipe_steps", "step", "elapsed_s", "flops", "cost",
                                                     "run_dir")} for name, s in result["stages"].items()},
           "loss": _loss_points(result), "curve": [], "probe": None, "finetune": None}
    out["samples"] = int(last["step"] * last["examples_per_step"])
    for p in result["probes"]:
        rows = {r["encoder"]: r for r in p["result"]["results"]}
        out["curve"].append({"step": p["step"], "elapsed_s": round(p["elapsed_s"], 2), "flops": p["flops"],
                             "linear": rows["pretrained"]["linear"], "knn": rows["pretrained"]["knn"]})
    if result["probes"]:
        task = task_key.split("/", 1)[1] if task_key else "probe"
        out["probe"] = _probe_summary(result["probes"][-1]["result"], baseline, task, seed)
        out["probe"]["file"] = result["probes"][-1]["file"]
    if result.get("finetune"):
        out["finetune"] = _finetune_summary(result["finetune"])
    return out


# ---- baselines ------------------------------------------------------------------------------------------------

def _baseline_digest(cfg: Any) -> str:
    """A hash of what decides a probe task's splits and its probe: the task, probe and data settings."""
    ident = {"modality": cfg.modality, "task": to_dict(getattr(cfg, "task", None)), "probe": to_dict(cfg.probe),
             "data": to_dict(cfg.data)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def raw_baseline(cfg: Any, out_dir: Path, progress: bool) -> dict[str, Any]:
    """The raw-input baseline of ``cfg``'s probe task (read back when computed already)."""
    from unimim.app.baseline import raw_baseline_run

    path = out_dir / BASELINE_DIR / f"{cfg.modality}-{_baseline_digest(cfg)}.json"
    done = read_json(path)
    if done is not None:
        return done
    log.info("raw-input baseline of the %s probe task", cfg.modality)
    result = raw_baseline_run(cfg, progress=progress)
    write_json(path, result)
    return result


# ---- comparisons ----------------------------------------------------------------------------------------------

def _probe_correct(row: dict[str, Any]) -> torch.Tensor | None:
    probe = read_json(Path(row["probe"]["file"])) if row.get("probe") else None
    if probe is None or "predictions" not in probe:
        return None
    p = probe["predictions"]
    return torch.tensor(p["pretrained"]) == torch.tensor(p["labels"])


def compare_entries(a: dict[str, Any], b: dict[str, Any], evaluation: str, seed: int = 0) -> dict[str, Any] | None:
    """Entry ``a`` minus entry ``b`` on the same task (``probe``: linear accuracy; ``finetune``: the task's main
    metric of the fine-tuned pretrained encoders), with a paired bootstrap interval over the test examples; None
    when either lacks the evaluation or they ran on other examples."""
    if evaluation == "probe":
        ca, cb = _probe_correct(a), _probe_correct(b)
        if ca is None or cb is None or ca.shape != cb.shape:
            return None
        return paired_bootstrap(ca, cb, seed=seed)
    fa, fb = a.get("finetune"), b.get("finetune")
    if not fa or not fb or fa["task"] != fb["task"]:
        return None
    ra = read_json(Path(fa["files"]["pretrained"]["checkpoint"]).parent / "result.json")
    rb = read_json(Path(fb["files"]["pretrained"]["checkpoint"]).parent / "result.json")
    if ra is None or rb is None or ra.get("labels") != rb.get("labels"):
        return None
    diff = compare_inits(ra, rb, seed=seed)
    return {k: diff[k] for k in ("metric", "diff", "low", "high", "level")}


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task, the best entry (linear probe; fine-tune metric) against each other entry."""
    out = []
    done = [r for r in rows if r["status"] == "done"]
    for evaluation in ("probe", "finetune"):
        by_task: dict[str, list[dict[str, Any]]] = {}
        for r in done:
            if r.get(evaluation):
                by_task.setdefault(f"{r['modality']}/{r[evaluation]['task']}", []).append(r)
        for task, group in by_task.items():
            if len(group) < 2:
                continue
            if evaluation == "probe":
                best = max(group, key=lambda r: r["probe"]["pretrained"]["linear"])
            else:
                sign = 1 if group[0]["finetune"]["higher_is_better"] else -1
                best = max(group, key=lambda r: sign * r["finetune"]["pretrained"])
            for other in group:
                if other is best:
                    continue
                diff = compare_entries(best, other, evaluation)
                if diff is not None:
                    out.append({"task": task, "evaluation": evaluation, "a": best["name"], "b": other["name"],
                                **diff})
    return out


# ---- the suite ------------------------------------------------------------------------------------------------

def _failed_row(plan: EntryPlan, error: str) -> dict[str, Any]:
    try:
        cfg = stage_config(plan, plan.last)
        modality, objective = cfg.modality, cfg.objective
    except ConfigError:
        modality, objective = None, None
    return {"name": plan.entry.name, "modality": modality, "objective": objective, "recipe": plan.last.recipe,
            "status": "failed", "error": error}


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    from unimim.eval.bench.plots import write_plots
    from unimim.eval.bench.report import results_csv, results_markdown

    write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results))
    (out / "results.csv").write_text(results_csv(results))
    return [out / n for n in ("results.md", "results.csv", "results.json")] + write_plots(results, out)


def bench_run(suite: Suite, *, only: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every entry of ``suite`` (those named in ``only``), write the outputs, return results.json's
    content."""
    check_stage_recipes(suite)
    out = suite_dir(suite)
    make_run_dir(out, suite.out_dir)
    plans = [plan_entry(suite, e, out) for e in suite.entries]  # every entry resolves before any runs
    unknown = sorted(set(only or ()) - {p.entry.name for p in plans})
    if unknown:
        raise ConfigError(f"--only names entries the suite lacks: {unknown}; entries: {[p.entry.name for p in plans]}")
    rows, baselines = [], {}
    with locked(out):
        for plan in plans:
            if only and plan.entry.name not in only:
                done = finished_result(plan)
                if done is None:
                    rows.append({"name": plan.entry.name, "status": "pending", "recipe": plan.last.recipe})
                    continue
            else:
                done = finished_result(plan)
            if done is not None:
                log.info("%s: finished earlier (%s); read back", plan.entry.name, plan.dir)
            else:
                log.info("entry %s (%d of %d)", plan.entry.name, plans.index(plan) + 1, len(plans))
                try:
                    done = run_entry(plan, progress=progress)
                except (TrainingInterrupted, KeyboardInterrupt):
                    raise
                except (RuntimeError, ValueError, OutputError, FileNotFoundError) as e:
                    log.error("entry %s failed: %s: %s", plan.entry.name, type(e).__name__, e)
                    rows.append(_failed_row(plan, f"{type(e).__name__}: {e}".splitlines()[0]))
                    continue
            cfg = stage_config(plan, plan.last)
            key, baseline = None, None
            if done["probes"]:
                key = f"{cfg.modality}/{done['probes'][-1]['result']['task']}"
                if suite.evaluate.baselines:
                    baseline = raw_baseline(cfg, out, progress)
                    baselines[key] = {k: baseline.get(k) for k in ("modality", "task", "features", "linear", "knn",
                                                                   "num_test")}
            rows.append(summarise_entry(done, baseline, key, seed=cfg.train.seed))
        results = {"suite": suite.name, "description": suite.description, "budget": to_dict(suite.budget),
                   "budget_text": suite.budget.describe(), "machine": machine(), "entries": rows,
                   "baselines": baselines, "comparisons": comparisons(rows)}
        files = write_outputs(results, out)
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return results


def compare_run(suite: Suite, a: str, b: str) -> str:
    """A one-paragraph comparison of two finished entries of a suite (from its stored per-example predictions)."""
    results = read_json(suite_dir(suite) / "results.json")
    if results is None:
        raise FileNotFoundError(f"no results.json in {suite_dir(suite)}: run the suite first")
    rows = {r["name"]: r for r in results["entries"]}
    for name in (a, b):
        if name not in rows or rows[name]["status"] != "done":
            raise ConfigError(f"entry {name!r} has no finished result in {suite_dir(suite)}")
    lines = []
    for evaluation in ("probe", "finetune"):
        diff = compare_entries(rows[a], rows[b], evaluation)
        if diff is None:
            lines.append(f"{evaluation}: not comparable (missing, or another task / other test examples)")
            continue
        metric = diff.get("metric", "linear accuracy")
        lines.append(f"{evaluation} ({metric}), {a} - {b}: {diff['diff']:+.4f} ({diff['level']:.0%} paired bootstrap "
                     f"interval {diff['low']:+.4f} to {diff['high']:+.4f})")
    return "\n".join(lines)
