"""The benchmark's tables: ``results.json`` (written by a suite run) -> ``results.md`` and ``results.csv``.

The markdown has one table per task (entries grouped by ``modality/task``), each with the raw-input baseline as its
own row, a legend saying what the intervals are and the budget, the failed entries' one-line errors, and then the
pairwise comparisons. Accuracies are shown in percent and differences in points (x100), each with its interval.
The csv is one flat row per entry, in the results' own units (fractions, seconds, FLOPs), for spreadsheets and
pandas. Any field of an entry may be missing or null (pending and failed entries): it shows as "–" in the markdown
and as an empty cell in the csv.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MISSING = "–"

CSV_COLUMNS = (
    "name", "modality", "task", "objective", "status", "steps", "samples", "train_seconds", "train_flops",
    "probe_linear", "probe_knn", "random_linear", "random_knn", "probe_gain", "probe_gain_low", "probe_gain_high",
    "raw_linear", "vs_raw", "vs_raw_low", "vs_raw_high", "finetune_metric", "finetune_pretrained", "finetune_random",
    "finetune_gain", "finetune_gain_low", "finetune_gain_high", "error",
)


# ---------------------------------------------------------------------------------------------------------- reading


def field(obj: Any, *keys: str) -> Any:
    """``obj[k0][k1]...``, or None where a level is missing, null or not a mapping."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def number(value: Any) -> float | None:
    """A finite int or float as float; anything else (None, str, bool, NaN, inf) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def entries(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The results' entries that are mappings; the others are skipped, counted and logged."""
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a JSON object (dict), got {type(results).__name__}")
    raw = results.get("entries") or []
    if not isinstance(raw, list):
        raise ValueError(f"results['entries'] must be a list, got {type(raw).__name__}")
    kept = [e for e in raw if isinstance(e, Mapping)]
    if len(kept) < len(raw):
        logger.warning("skipped %d of %d entries that are not JSON objects", len(raw) - len(kept), len(raw))
    return kept


def _task_of(entry: Mapping[str, Any]) -> str | None:
    """``modality/task`` named by the entry itself (its probe's task, else its fine-tune's), or None."""
    task = field(entry, "probe", "task") or field(entry, "finetune", "task") or entry.get("task")
    if not isinstance(task, str) or not task:
        return None
    if "/" in task:
        return task
    return f"{entry.get('modality') or MISSING}/{task}"


def finetune_task(entry: Mapping[str, Any]) -> str | None:
    """``modality/task`` of the entry's fine-tune, or None when it has none."""
    task = field(entry, "finetune", "task")
    if not isinstance(task, str) or not task:
        return None
    return task if "/" in task else f"{entry.get('modality') or MISSING}/{task}"


def group_by_task(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Entries grouped by ``modality/task``, in order of first appearance.

    An entry that names no task (a failed or pending one, evaluated on nothing) joins its modality's task when that
    modality has exactly one; otherwise it gets a ``modality/–`` group of its own.
    """
    named = [(e, _task_of(e)) for e in items]
    by_modality: dict[str, set[str]] = {}
    for e, task in named:
        if task is not None:
            by_modality.setdefault(str(e.get("modality")), set()).add(task)
    groups: dict[str, list[dict[str, Any]]] = {}
    for e, task in named:
        if task is None:
            tasks = by_modality.get(str(e.get("modality")), set())
            task = next(iter(tasks)) if len(tasks) == 1 else f"{e.get('modality') or MISSING}/{MISSING}"
        groups.setdefault(task, []).append(e)
    return groups


def baseline_of(results: Mapping[str, Any], task: str) -> Mapping[str, Any] | None:
    """The raw-input baseline of ``modality/task``, or None."""
    base = field(results, "baselines", task)
    return base if isinstance(base, Mapping) else None


# ------------------------------------------------------------------------------------------------------ formatting


def _signed_points(x: float) -> str:
    text = f"{100.0 * x:+.1f}"
    return "+0.0" if text == "-0.0" else text


def fmt_percent(value: Any) -> str:
    """0.8123 -> "81.2"; missing -> "–"."""
    x = number(value)
    return MISSING if x is None else f"{100.0 * x:.1f}"


def fmt_interval(ci: Any) -> str:
    """A difference with its interval, in points: {diff 0.0703, low 0.0651, high 0.0782} -> "+7.0 [+6.5, +7.8]"."""
    diff = number(field(ci, "diff"))
    if diff is None:
        return MISSING
    low, high = number(field(ci, "low")), number(field(ci, "high"))
    if low is None or high is None:
        return _signed_points(diff)
    return f"{_signed_points(diff)} [{_signed_points(low)}, {_signed_points(high)}]"


def fmt_flops(value: Any) -> str:
    """1.2e15 -> "1.2e15"; missing -> "–"."""
    x = number(value)
    if x is None:
        return MISSING
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_minutes(seconds: Any) -> str:
    """301.2 -> "5.0" (minutes); missing -> "–"."""
    x = number(seconds)
    return MISSING if x is None else f"{x / 60.0:.1f}"


def fmt_count(value: Any) -> str:
    """64000 -> "64,000"; missing -> "–"."""
    x = number(value)
    return MISSING if x is None else f"{round(x):,}"


def fmt_budget(budget: Any) -> str:
    """The suite's budget in words: {"kind": "seconds", "value": 600} -> "600 s (10.0 min) of training per entry"."""
    kind, value = field(budget, "kind"), number(field(budget, "value"))
    if value is None or not isinstance(kind, str):
        return "budget unknown"
    if kind == "seconds":
        text = f"{value:g} s ({value / 60.0:.1f} min)"
    elif kind == "flops":
        text = f"{fmt_flops(value)} FLOPs"
    elif kind in ("steps", "samples"):
        text = f"{fmt_count(value)} {kind}"
    else:
        text = f"{value:g} {kind}"
    return f"{text} of training per entry"


def _fmt_machine(machine: Any) -> str:
    if not isinstance(machine, Mapping):
        return "unknown machine"
    parts = []
    threads = number(machine.get("threads"))
    if threads is not None:
        parts.append(f"{round(threads)} threads")
    for key, prefix in (("device", ""), ("torch", "torch ")):
        if machine.get(key) not in (None, ""):
            parts.append(f"{prefix}{machine[key]}")
    cpu = machine.get("cpu") or "unknown CPU"
    return f"{cpu} ({', '.join(parts)})" if parts else str(cpu)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------------- tables


def _table(headers: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    """A GitHub markdown table with aligned pipes: every column padded to its widest cell."""
    rows = [[c.replace("|", "\\|") for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    widths = [max(w, 3) for w in widths]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if r else ("-" * w) for w, r in zip(widths, right)) + " |"
    return [line(headers), rule] + [line(r) for r in rows]


def _entry_row(e: Mapping[str, Any]) -> list[str]:
    status = e.get("status")
    name = str(e.get("name") or MISSING)
    if status in ("failed", "pending"):
        name = f"{name} ({status})"
    ft = e.get("finetune") if isinstance(e.get("finetune"), Mapping) else {}
    return [
        name, str(e.get("objective") or MISSING), fmt_count(e.get("steps")), fmt_minutes(e.get("train_seconds")),
        fmt_flops(e.get("train_flops")),
        fmt_percent(field(e, "probe", "pretrained", "linear")), fmt_interval(field(e, "probe", "gain")),
        fmt_interval(field(e, "probe", "vs_raw")), fmt_percent(field(e, "probe", "pretrained", "knn")),
        fmt_percent(ft.get("pretrained")), fmt_interval(ft.get("gain")),
    ]


def _baseline_row(base: Mapping[str, Any]) -> list[str]:
    features = _one_line(base.get("features") or "raw input")
    return (["raw input", features] + [MISSING] * 3 + [fmt_percent(base.get("linear")), MISSING, MISSING,
                                                         fmt_percent(base.get("knn")), MISSING, MISSING])


def _metric_words(group: list[dict[str, Any]]) -> tuple[str, bool | None]:
    """The group's fine-tune metric name ("top1", "cer", "mixed" or "") and whether higher is better."""
    metrics = {str(field(e, "finetune", "metric")) for e in group if isinstance(e.get("finetune"), Mapping)}
    metrics.discard("None")
    higher = {field(e, "finetune", "higher_is_better") for e in group if isinstance(e.get("finetune"), Mapping)}
    higher.discard(None)
    metric = next(iter(metrics)) if len(metrics) == 1 else ("mixed" if metrics else "")
    return metric, (next(iter(higher)) if len(higher) == 1 else None)


def _legend(results: Mapping[str, Any], group: list[dict[str, Any]], base: Mapping[str, Any] | None) -> str:
    levels = [number(field(e, sec, key, "level")) for e in group
              for sec, key in (("probe", "gain"), ("probe", "vs_raw"), ("finetune", "gain"))]
    level = next((x for x in levels if x is not None), 0.95)
    counts = sorted({round(x) for e in group for x in [number(field(e, "probe", "num_test"))] if x is not None})
    over = f"the {counts[0]:,} test examples" if len(counts) == 1 else "the test examples"
    text = (f"Accuracies in %, Δ in points (x100); intervals: {100 * level:g} % paired bootstrap over {over}. "
            f"Δ vs random: the same architecture at random init; Δ vs raw: the same probe on the raw input")
    metric, higher = _metric_words(group)
    if metric:
        fts = sorted({str(field(e, "finetune", "task")) for e in group if field(e, "finetune", "task")})
        text += f". Fine-tune: {metric}" + (f" on {', '.join(fts)}" if fts else "")
        text += ", Δ vs the same architecture from scratch"
        if higher is False:
            text += " (lower is better)"
    return text + f". Budget: {fmt_budget(results.get('budget'))}."


def _task_section(results: Mapping[str, Any], task: str, group: list[dict[str, Any]]) -> list[str]:
    base = baseline_of(results, task)
    metric, _ = _metric_words(group)
    ft = f"ft {metric} %" if metric and metric != "mixed" else "fine-tune %"
    headers = ["entry", "objective", "steps", "train min", "train FLOPs", "linear %", "Δ vs random", "Δ vs raw",
               "kNN %", ft, "Δ vs scratch"]
    right = [False, False] + [True] * 9
    rows = [_entry_row(e) for e in group]
    if base is not None:
        rows.append(_baseline_row(base))
    lines = [f"## {task.replace('/', ' / ', 1)}", "", *_table(headers, rows, right), "", _legend(results, group, base)]
    notes = []
    for e in group:
        if e.get("status") == "failed":
            notes.append(f"- **{e.get('name') or MISSING}** failed: {_one_line(e.get('error') or 'no error message')}")
        elif e.get("status") == "pending":
            notes.append(f"- **{e.get('name') or MISSING}** is pending (not run yet).")
    return lines + ([""] + notes if notes else [])


def _comparison_line(c: Mapping[str, Any], higher_better: Mapping[str, bool]) -> str:
    a, b = str(c.get("a") or MISSING), str(c.get("b") or MISSING)
    evaluation = str(c.get("evaluation") or MISSING)
    text = f"- {c.get('task') or MISSING}, {evaluation}: {a} − {b} = {fmt_interval(c)} points"
    low, high = number(c.get("low")), number(c.get("high"))
    if low is None or high is None:
        return text
    if low <= 0.0 <= high:
        return text + " (the interval includes 0: no clear difference)"
    higher = True if evaluation != "finetune" else higher_better.get(a, True)
    return text + f" ({a if (low > 0) == higher else b} is better)"


def results_markdown(results: dict) -> str:
    """The benchmark's results as GitHub markdown, readable in a terminal (see the module docstring).

    Args:
        results: the parsed ``results.json`` of a suite run.

    Returns:
        The markdown text, ending in a newline.
    """
    items = entries(results)
    title = (f"# Benchmark {results.get('suite') or MISSING}: {fmt_budget(results.get('budget'))}, "
             f"on {_fmt_machine(results.get('machine'))}")
    lines = [title, ""]
    if results.get("description"):
        lines += [_one_line(results["description"]), ""]
    if not items:
        lines += ["No entries.", ""]
    for task, group in group_by_task(items).items():
        lines += _task_section(results, task, group) + [""]
    comparisons = [c for c in (results.get("comparisons") or []) if isinstance(c, Mapping)]
    if comparisons:
        higher_better = {str(e.get("name")): field(e, "finetune", "higher_is_better") is not False for e in items}
        lines += ["## Comparisons", "",
                  "Paired differences on the same test examples (a − b, in points, with their intervals):", ""]
        lines += [_comparison_line(c, higher_better) for c in comparisons] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------------------------- csv


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        return _one_line(value)
    x = number(value)
    if x is None:
        return ""
    return str(int(x)) if isinstance(value, int) else f"{x:.15g}"  # 15 digits: decimal inputs round-trip exactly


def results_csv(results: dict) -> str:
    """One flat row per entry (columns :data:`CSV_COLUMNS`), in the results' own units; empty cells where missing.

    Args:
        results: the parsed ``results.json`` of a suite run.

    Returns:
        The csv text (header first).
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for task, group in group_by_task(entries(results)).items():
        base = baseline_of(results, task) or {}
        for e in group:
            row = {
                "name": e.get("name"), "modality": e.get("modality"), "task": task, "objective": e.get("objective"),
                "status": e.get("status"), "steps": e.get("steps"), "samples": e.get("samples"),
                "train_seconds": e.get("train_seconds"), "train_flops": e.get("train_flops"),
                "probe_linear": field(e, "probe", "pretrained", "linear"),
                "probe_knn": field(e, "probe", "pretrained", "knn"),
                "random_linear": field(e, "probe", "random", "linear"),
                "random_knn": field(e, "probe", "random", "knn"),
                "probe_gain": field(e, "probe", "gain", "diff"), "probe_gain_low": field(e, "probe", "gain", "low"),
                "probe_gain_high": field(e, "probe", "gain", "high"), "raw_linear": base.get("linear"),
                "vs_raw": field(e, "probe", "vs_raw", "diff"), "vs_raw_low": field(e, "probe", "vs_raw", "low"),
                "vs_raw_high": field(e, "probe", "vs_raw", "high"),
                "finetune_metric": field(e, "finetune", "metric"),
                "finetune_pretrained": field(e, "finetune", "pretrained"),
                "finetune_random": field(e, "finetune", "random"),
                "finetune_gain": field(e, "finetune", "gain", "diff"),
                "finetune_gain_low": field(e, "finetune", "gain", "low"),
                "finetune_gain_high": field(e, "finetune", "gain", "high"),
                "error": e.get("error"),
            }
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """Write ``results.md`` and ``results.csv`` into ``out_dir`` (created if needed); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, table = out_dir / "results.md", out_dir / "results.csv"
    md.write_text(results_markdown(results), encoding="utf-8")
    table.write_text(results_csv(results), encoding="utf-8", newline="")
    return [md, table]
