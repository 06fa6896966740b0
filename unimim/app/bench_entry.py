"""One entry of a benchmark suite: its stages pretrained under the entry's budget, then its last stage evaluated
(probes at points along the budget, fine-tuning against from scratch). Used by :mod:`unimim.app.bench`.

    SUITE_DIR/<entry>/
        entry.json          the entry's fingerprint and each stage's resolved steps (and measured step cost):
                            written before a stage starts, so that a resumed suite keeps the same steps
        <stage>/            the stage's run directory (``unimim pretrain``: checkpoint, metrics.jsonl, config.yaml;
                            ``finetune/<task>/`` of the last stage)
        eval/probe_step<N>.json   the probes of the last stage's checkpoint at step N (pretrained and random)
        result.json         the entry's finished result (the fingerprint it was made with)

Everything here resumes: a stage continues from its checkpoint, a probe or fine-tune already written is read back,
and an entry whose settings changed (another fingerprint) is set aside and run again, never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimim.app.experiment import load_recipe
from unimim.app.recipes import find_recipe, resolve_recipe
from unimim.config import ConfigError, read_yaml, to_dict
from unimim.eval.bench.budget import steps_for_budget, stretch_schedule
from unimim.eval.bench.suite import STAGE_REF, Entry, Stage, Suite
from unimim.train.metrics import read_metrics
from unimim.train.run import RUNTIME_CHANGES, _flatten
from unimim.train.run_dir import OutputError, describe_os_error

log = logging.getLogger(__name__)

ENTRY_STATE = "entry.json"
ENTRY_RESULT = "result.json"
EVAL_DIR = "eval"
# a seconds budget is turned into steps by a measured step cost; the run is also stopped at this multiple of its
# share of the budget (the machine may slow down under other load)
SECONDS_CAP = 1.25


def write_json(path: Path, obj: Any) -> None:
    """Atomically (temporary file + rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {describe_os_error(e)}") from None


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (a torn write is redone, not trusted)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class EntryPlan:
    """An entry resolved against its suite: where it runs and what identifies its results."""

    suite: Suite
    entry: Entry
    dir: Path
    fingerprint: str

    def stage_dir(self, stage: Stage) -> Path:
        return self.dir / stage.name

    @property
    def last(self) -> Stage:
        return self.entry.stages[-1]


def _stage_overrides(plan: EntryPlan, stage: Stage) -> list[str]:
    """The suite's overrides, then the stage's (``{stage}`` -> that stage's run directory), then where it runs."""
    dirs = {s.name: str(plan.stage_dir(s)) for s in plan.entry.stages}
    own = [STAGE_REF.sub(lambda m: dirs[m.group(1)], o) for o in stage.overrides]
    return [*plan.suite.overrides, *own, f"train.out_dir={plan.dir}", f"name={stage.name}"]


def stage_config(plan: EntryPlan, stage: Stage, extra: list[str] | None = None) -> Any:
    return load_recipe(stage.recipe, [*_stage_overrides(plan, stage), *(extra or [])])


def _identity(cfg: Any, entry_dir: Path) -> dict[str, Any]:
    """A stage's config without what may change between invocations (machine settings, where it runs: a path into
    the entry's directory, such as an earlier stage's run, is kept relative to it)."""
    flat = _flatten(to_dict(cfg))
    here = str(entry_dir)
    return {k: v.replace(here, "{entry}") if isinstance(v, str) else v for k, v in flat.items()
            if not k.startswith((*RUNTIME_CHANGES, "name"))}


def finetunes(suite: Suite, entry: Entry) -> bool:
    return suite.evaluate.finetune and entry.finetune is not False


def _finetune_recipe(suite: Suite, entry: Entry, modality: str) -> str | None:
    """The entry's fine-tune recipe: its own, else its modality's in the suite; None: the run's own ``finetune`` and
    ``task`` settings (as ``unimim finetune RUN_DIR`` without a recipe)."""
    return entry.finetune if isinstance(entry.finetune, str) else suite.evaluate.finetune_recipes.get(modality)


def plan_entry(suite: Suite, entry: Entry, suite_dir: Path) -> EntryPlan:
    """The entry's directory and fingerprint: a hash of every stage's resolved config (machine settings left out),
    the budget and the entry's share of it, and the evaluations with their recipes' contents."""
    plan = EntryPlan(suite, entry, suite_dir / entry.name, "")
    stages = []
    for stage, share in zip(entry.stages, entry.shares()):
        cfg = stage_config(plan, stage)
        stages.append({"name": stage.name, "share": share, "config": _identity(cfg, plan.dir)})
    modality = stage_config(plan, entry.stages[-1]).modality
    ft = _finetune_recipe(suite, entry, modality) if finetunes(suite, entry) else None
    ident = {"stages": stages, "budget": to_dict(suite.budget), "launch": to_dict(suite.launch),
             "evaluate": {"probe": suite.evaluate.probe, "probe_points": suite.evaluate.probe_points,
                          "probe_overrides": entry.probe_overrides, "baselines": suite.evaluate.baselines,
                          "finetune": finetunes(suite, entry),
                          "finetune_recipe": None if ft is None else read_yaml(resolve_recipe(ft), find_recipe),
                          "finetune_overrides": entry.finetune_overrides}}
    plan.fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return plan


def set_aside_entry(plan: EntryPlan) -> Path:
    """Move a changed entry's directory to ``SUITE_DIR/replaced/<entry>-<time>`` (kept, never mixed)."""
    dest = plan.dir.parent / "replaced" / f"{plan.entry.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        plan.dir.rename(dest)
    except OSError as e:
        raise OutputError(f"cannot set aside {plan.dir}: {describe_os_error(e)}") from None
    return dest


def _checkpoint_progress(run_dir: Path) -> dict[str, float]:
    """Step, elapsed seconds and FLOPs of a run directory's latest checkpoint (zeros when there is none)."""
    from unimim.train.progress import run_progress

    try:
        at = run_progress(run_dir)
    except FileNotFoundError:
        return {"step": 0, "elapsed_s": 0.0, "flops": 0.0}
    # a checkpoint of a release that did not record its totals: nothing known spent
    return {"step": int(at["step"]), "elapsed_s": at["elapsed_s"] or 0.0, "flops": at["flops"] or 0.0}


def _logged_progress(run_dir: Path, step: int) -> dict[str, float] | None:
    """Step, elapsed seconds and FLOPs of ``step`` from the run's metrics.jsonl (a slice logs its last step), for a
    probe point that an earlier invocation reached and the checkpoint has since passed; None when not logged."""
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    line = next((m for m in read_metrics(run_dir) if m.get("step") == step and "elapsed_s" in m), None)
    if line is None:
        return None
    return {"step": step, "elapsed_s": float(line["elapsed_s"]), "flops": float(line.get("flops") or 0.0)}


class StageRunner:
    """Runs pretraining slices of a stage: in this process, or under the suite's launcher (DeepSpeed, many
    processes) as ``LAUNCHER unimim pretrain RECIPE overrides...``."""

    def __init__(self, suite: Suite, progress: bool) -> None:
        self.launch, self.progress = suite.launch, progress

    @property
    def world_size(self) -> int:
        return 1 if self.launch is None else self.launch.world_size

    def __call__(self, plan: EntryPlan, stage: Stage, extra: list[str]) -> None:
        if self.launch is None:
            from unimim.app.pretrain import pretrain

            pretrain(stage_config(plan, stage, extra), progress=self.progress)
            return
        ds = []
        if self.launch.deepspeed:
            ds = ["deepspeed.enabled=true"]
            if self.launch.deepspeed_config:
                ds.append(f"deepspeed.config={self.launch.deepspeed_config}")
        unimim = shutil.which("unimim") or str(Path(sys.executable).with_name("unimim"))
        cmd = [*shlex.split(self.launch.command), unimim, "pretrain", str(resolve_recipe(stage.recipe)),
               *_stage_overrides(plan, stage), *ds, *extra]
        if not self.progress:
            cmd.append("--no-progress")
        log.info("launching: %s", shlex.join(cmd))
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            raise RuntimeError(f"the launched pretraining of {plan.entry.name}/{stage.name} exited with status {rc}")


def _resolve_steps(plan: EntryPlan, stage: Stage, share: float, runner: StageRunner) -> dict[str, Any]:
    """The stage's steps under its share of the budget (a measured step cost for seconds and FLOPs budgets)."""
    budget = plan.suite.budget
    cfg = stage_config(plan, stage)
    examples = cfg.effective_batch * runner.world_size
    value = budget.value * share
    out: dict[str, Any] = {"recipe_steps": cfg.train.steps, "budget": value, "examples_per_step": examples}
    cost = {}
    if budget.kind in ("seconds", "flops"):
        from unimim.app.cost import measure_step_cost

        log.info("%s/%s: measuring the step cost for a %s budget", plan.entry.name, stage.name, budget.kind)
        measured = measure_step_cost(cfg)
        cost = {"seconds_per_step": measured.seconds_per_step,
                "flops_per_step": measured.flops_per_step * runner.world_size}
        out["cost"] = dataclasses.asdict(measured) | {"world_size": runner.world_size}
    out["steps"] = steps_for_budget(budget.kind, value, examples_per_step=examples, **cost)
    if budget.kind == "seconds":
        out["max_seconds"] = round(value * SECONDS_CAP, 3)
    log.info("%s/%s: %d steps for %s (recipe: %d)", plan.entry.name, stage.name, out["steps"],
             f"{value:.4g} {budget.kind}", cfg.train.steps)
    return out


def _budget_overrides(plan: EntryPlan, stage: Stage, resolved: dict[str, Any]) -> list[str]:
    raw = to_dict(stage_config(plan, stage))
    extra = stretch_schedule(raw, resolved["steps"])
    if "max_seconds" in resolved:
        extra.append(f"train.max_seconds={resolved['max_seconds']}")
    return extra


def probe_targets(steps: int, points: int) -> list[int]:
    """The steps at which the last stage is probed: ``points`` evenly spaced, the last at ``steps``."""
    return sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)})


def _probe_path(plan: EntryPlan, step: int) -> Path:
    return plan.dir / EVAL_DIR / f"probe_step{step}.json"


def _stored_probe(plan: EntryPlan, step: int) -> dict[str, Any] | None:
    """The probe written for ``step`` by an earlier invocation, or None."""
    done = read_json(_probe_path(plan, step))
    return done if done is not None and done.get("step") == step else None


def _probe(plan: EntryPlan, run_dir: Path, step: int, progress: bool, final: bool) -> dict[str, Any]:
    """The probe of the stage's checkpoint at ``step`` (read back when written already); the random twin only at
    the ``final`` point (it is the same at every point)."""
    from unimim.app.probe import probe_run

    path = _probe_path(plan, step)
    done = _stored_probe(plan, step)
    if done is not None:
        return done
    result = probe_run(run_dir, list(plan.entry.probe_overrides), progress=progress, out=path, random_twin=final)
    result.pop("table", None)
    return result


def run_entry(plan: EntryPlan, *, progress: bool = True) -> dict[str, Any]:
    """Pretrain the entry's stages and evaluate its last stage; the raw material of its result (stage progress,
    probes, fine-tune), written as ``result.json``. Raises on errors (the suite records them)."""
    suite, entry = plan.suite, plan.entry
    state = read_json(plan.dir / ENTRY_STATE) or {}
    if state.get("fingerprint") not in (None, plan.fingerprint):
        dest = set_aside_entry(plan)
        log.warning("%s: its settings changed since it ran; the earlier results are set aside in %s", entry.name,
                    dest)
        state = {}
    state = {"fingerprint": plan.fingerprint, "stages": state.get("stages", {})}
    write_json(plan.dir / ENTRY_STATE, state)
    runner = StageRunner(suite, progress)
    stages: dict[str, Any] = {}
    offset = {"elapsed_s": 0.0, "flops": 0.0}  # what the earlier stages spent (charged to the entry)
    probes: list[dict[str, Any]] = []
    for i, (stage, share) in enumerate(zip(entry.stages, entry.shares())):
        resolved = state["stages"].get(stage.name)
        if resolved is None:
            resolved = _resolve_steps(plan, stage, share, runner)
            state["stages"][stage.name] = resolved
            write_json(plan.dir / ENTRY_STATE, state)
        extra = _budget_overrides(plan, stage, resolved)
        run_dir = plan.stage_dir(stage)
        steps = resolved["steps"]
        is_last = i == len(entry.stages) - 1
        targets = probe_targets(steps, suite.evaluate.probe_points) if is_last and suite.evaluate.probe else [steps]
        for target in targets:
            at = _checkpoint_progress(run_dir)
            if at["step"] < target and not _out_of_time(at, resolved):
                runner(plan, stage, [*extra, f"train.stop_after={target - int(at['step'])}"])
                at = _checkpoint_progress(run_dir)
            if at["step"] == 0:
                raise RuntimeError(f"{entry.name}/{stage.name}: no checkpoint after pretraining")
            if is_last and suite.evaluate.probe:
                if at["step"] > target:  # an earlier invocation stopped here, probed, and trained on
                    point, probe = _logged_progress(run_dir, target), _stored_probe(plan, target)
                    if point is None or probe is None:  # never the probe of the wrong checkpoint
                        log.warning("%s/%s: no probe of step %d was kept and the checkpoint is at step %d: that "
                                    "point of the curve is left out", entry.name, stage.name, target, at["step"])
                        continue
                else:
                    point = at
                    probe = _probe(plan, run_dir, int(at["step"]), progress, target == targets[-1] or
                                   at["step"] < target)
                probes.append({"step": int(point["step"]), "elapsed_s": offset["elapsed_s"] + point["elapsed_s"],
                               "flops": offset["flops"] + point["flops"],
                               "file": str(_probe_path(plan, int(point["step"]))), "result": probe})
            if at["step"] < target:  # stopped by its wall-clock cap: the stage ends here
                log.warning("%s/%s: stopped by its wall-clock cap at step %d of %d", entry.name, stage.name,
                            at["step"], steps)
                break
        stages[stage.name] = {"run_dir": str(run_dir), **resolved, **at,
                              "metrics": read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []}
        offset = {k: offset[k] + at[k] for k in offset}
    last_dir = plan.stage_dir(plan.last)
    cfg = stage_config(plan, plan.last)
    finetune, recipe = None, _finetune_recipe(suite, entry, cfg.modality)
    if finetunes(suite, entry):
        from unimim.app.finetune import finetune_run

        finetune = finetune_run(last_dir, recipe, list(entry.finetune_overrides), progress=progress)
        finetune.pop("table", None)
        if not finetune.get("complete"):
            raise RuntimeError(f"{entry.name}: the fine-tune did not complete")
    result = {"fingerprint": plan.fingerprint, "name": entry.name, "modality": cfg.modality,
              "objective": cfg.objective, "recipe": plan.last.recipe, "stages": stages, "probes": probes,
              "finetune": finetune, "finetune_recipe": recipe}
    write_json(plan.dir / ENTRY_RESULT, result)
    return result


def _out_of_time(at: dict[str, float], resolved: dict[str, Any]) -> bool:
    cap = resolved.get("max_seconds")
    return cap is not None and at["step"] > 0 and at["elapsed_s"] >= cap


def finished_result(plan: EntryPlan) -> dict[str, Any] | None:
    """The entry's result when it finished with the same fingerprint, else None."""
    done = read_json(plan.dir / ENTRY_RESULT)
    return done if done is not None and done.get("fingerprint") == plan.fingerprint else None


def check_stage_recipes(suite: Suite) -> None:
    """Every stage recipe resolves (a clear error before anything runs)."""
    for entry in suite.entries:
        for stage in entry.stages:
            try:
                resolve_recipe(stage.recipe)
            except ConfigError as e:
                raise ConfigError(f"entry {entry.name}, stage {stage.name}: {e}") from None
