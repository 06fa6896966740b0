"""The benchmark's plots: ``results.json`` -> PNGs (matplotlib's Agg canvas, imported only when plotting).

- ``probe_vs_time.png`` / ``probe_vs_flops.png``: per task, each entry's linear-probe accuracy at its checkpoints
  against elapsed training seconds / cumulative training FLOPs (log x), with each entry's random-weights probe and
  the raw-input baseline as labelled dashed lines.
- ``finetune.png``: per fine-tune task, pretrained vs from-scratch bars per entry; the whisker on the pretrained bar
  is the gain's interval (from scratch + [low, high]), and the gain is written above it.
- ``loss_curves.png``: one panel per entry (objectives have different loss scales), loss against elapsed seconds.

A plot that no entry has data for is not written; missing or non-finite fields are skipped, never fatal.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from unimim.eval.bench.report import (
    baseline_of,
    entries,
    field,
    finetune_task,
    fmt_interval,
    group_by_task,
    number,
)

logger = logging.getLogger(__name__)

DPI = 120
PANEL = (5.6, 4.0)  # inches per subplot


def _points(entry: dict[str, Any], key: str, x_key: str, y_key: str, *, positive_x: bool = False) -> list[tuple]:
    """(x, y) pairs of ``entry[key]`` with both values finite (x > 0 when ``positive_x``), sorted by x."""
    rows = entry.get(key)
    if not isinstance(rows, list):
        return []
    out = []
    for row in rows:
        x, y = number(field(row, x_key)), number(field(row, y_key))
        if x is not None and y is not None and (x > 0 or not positive_x):
            out.append((x, y))
    return sorted(out)


def _probe_points(entry: dict[str, Any], x_key: str, *, positive_x: bool) -> list[tuple]:
    """The entry's probe curve; with no curve, its final probe at its total train seconds / FLOPs."""
    pts = _points(entry, "curve", x_key, "linear", positive_x=positive_x)
    if pts:
        return pts
    x = number(entry.get("train_seconds" if x_key == "elapsed_s" else "train_flops"))
    y = number(field(entry, "probe", "pretrained", "linear"))
    if x is None or y is None or (positive_x and x <= 0):
        return []
    return [(x, y)]


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _figure(n: int, max_cols: int = 3, panel_width: float = PANEL[0]):
    """A Figure with n axes on a grid (extra cells hidden), not attached to pyplot's global state."""
    from matplotlib.figure import Figure

    rows, cols = _grid(n, max_cols)
    fig = Figure(figsize=(panel_width * cols, PANEL[1] * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _colors(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One colour per entry name, the same in every plot."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {str(e.get("name")): cmap(i % 10) for i, e in enumerate(items)}


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # legends placed beside a panel included
    logger.info("wrote %s", path)
    return path


def _probe_plot(results: dict, items: list[dict[str, Any]], colors: dict, x_key: str, path: Path) -> Path | None:
    """probe_vs_time.png (x_key "elapsed_s") or probe_vs_flops.png (x_key "flops", log x)."""
    log_x = x_key == "flops"
    groups = {task: [(e, _probe_points(e, x_key, positive_x=log_x)) for e in group]
              for task, group in group_by_task(items).items()}
    groups = {task: rows for task, rows in groups.items() if any(pts for _, pts in rows)}
    if not groups:
        logger.info("no probe curve against %s in any entry: %s not written", x_key, path.name)
        return None
    fig, axes = _figure(len(groups))
    for ax, (task, rows) in zip(axes, groups.items()):
        for e, pts in rows:
            name, color = str(e.get("name")), colors[str(e.get("name"))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, [100 * y for y in ys], marker="o", markersize=4, color=color, label=name)
            rand = number(field(e, "probe", "random", "linear"))
            if rand is not None:
                ax.axhline(100 * rand, linestyle="--", linewidth=1, color=color, alpha=0.7,
                           label=f"{name}: random init")
        base = baseline_of(results, task)
        raw = number(field(base, "linear"))
        if raw is not None:
            ax.axhline(100 * raw, linestyle="--", linewidth=1.5, color="black",
                       label=f"raw input: {base.get('features') or 'baseline'}")
        if log_x:
            ax.set_xscale("log")
        else:
            ax.set_xlim(left=0)
        ax.set_xlabel("cumulative training FLOPs" if log_x else "training time (s)")
        ax.set_ylabel("linear-probe accuracy (%)")
        ax.set_title(task)
        ax.grid(True, which="both" if log_x else "major", alpha=0.3)
        # beside the panel, not over the curves (a suite of many entries has a long legend)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{results.get('suite') or 'benchmark'}: linear probe vs "
                 f"{'training FLOPs' if log_x else 'wall-clock training time'}")
    return _save(fig, path)


def _finetune_plot(results: dict, items: list[dict[str, Any]], colors: dict, path: Path) -> Path | None:
    """finetune.png: per fine-tune task, pretrained vs from-scratch bars with the gain's interval."""
    from matplotlib.patches import Patch

    groups: dict[str, list[dict[str, Any]]] = {}
    for e in items:
        task = finetune_task(e)
        pre, scratch = number(field(e, "finetune", "pretrained")), number(field(e, "finetune", "random"))
        if task is not None and (pre is not None or scratch is not None):
            groups.setdefault(task, []).append(e)
    if not groups:
        logger.info("no fine-tune result in any entry: %s not written", path.name)
        return None
    most = max(len(g) for g in groups.values())
    fig, axes = _figure(len(groups), panel_width=max(PANEL[0], 0.8 * most))  # room for each entry's label
    width = 0.38
    for ax, (task, group) in zip(axes, groups.items()):
        metric = str(field(group[0], "finetune", "metric") or "metric")
        lower_better = field(group[0], "finetune", "higher_is_better") is False
        for i, e in enumerate(group):
            color = colors[str(e.get("name"))]
            pre, scratch = number(field(e, "finetune", "pretrained")), number(field(e, "finetune", "random"))
            if scratch is not None:
                ax.bar(i + width / 2, 100 * scratch, width, color=color, alpha=0.35, hatch="//", edgecolor=color)
            if pre is None:
                continue
            ax.bar(i - width / 2, 100 * pre, width, color=color)
            low, high = number(field(e, "finetune", "gain", "low")), number(field(e, "finetune", "gain", "high"))
            if scratch is not None and low is not None and high is not None:
                lo, hi = 100 * (scratch + low), 100 * (scratch + high)
                ax.errorbar(i - width / 2, 100 * pre, yerr=[[max(100 * pre - lo, 0)], [max(hi - 100 * pre, 0)]],
                            fmt="none", ecolor="black", capsize=4, linewidth=1.2)
                label = fmt_interval(field(e, "finetune", "gain")).replace(" [", "\n[", 1)  # gain over interval
                ax.annotate(label, (i, max(hi, 100 * pre, 100 * scratch)),
                            xytext=(0, 4), textcoords="offset points", ha="center", fontsize="x-small")
        ax.set_xticks(range(len(group)), [str(e.get("name")) for e in group], rotation=20, ha="right")
        ax.set_xlim(-0.8, len(group) - 0.2)
        ax.set_ylabel(f"{metric} (%)" + (", lower is better" if lower_better else ""))
        ax.set_title(f"{task}: pretrained vs from scratch")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.15)
        ax.legend(handles=[Patch(color="0.4", label="pretrained"),
                           Patch(facecolor="0.85", edgecolor="0.4", hatch="//", label="from scratch")],
                  fontsize="small")
    fig.suptitle(f"{results.get('suite') or 'benchmark'}: fine-tune (whisker: the gain's interval)")
    return _save(fig, path)


def _loss_plot(results: dict, items: list[dict[str, Any]], colors: dict, path: Path) -> Path | None:
    """loss_curves.png: one panel per entry with a loss curve, each on its own y scale."""
    curves = [(e, pts) for e in items if (pts := _points(e, "loss", "elapsed_s", "loss"))]
    if not curves:
        logger.info("no loss curve in any entry: %s not written", path.name)
        return None
    fig, axes = _figure(len(curves), max_cols=4)
    for ax, (e, pts) in zip(axes, curves):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, linewidth=1.2, color=colors[str(e.get("name"))], label=str(e.get("objective") or "loss"))
        if min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
        ax.set_title(f"{e.get('name')} ({e.get('modality') or '?'})")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("training loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{results.get('suite') or 'benchmark'}: training loss (each objective on its own scale)")
    return _save(fig, path)


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    """Write the benchmark's PNGs into ``out_dir`` (created if needed).

    Args:
        results: the parsed ``results.json`` of a suite run.
        out_dir: directory of the PNGs.

    Returns:
        The paths written, in the order probe_vs_time, probe_vs_flops, finetune, loss_curves; a plot that no entry
        has data for is skipped and has no path.
    """
    items = entries(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = _colors(items)
    written = [
        _probe_plot(results, items, colors, "elapsed_s", out_dir / "probe_vs_time.png"),
        _probe_plot(results, items, colors, "flops", out_dir / "probe_vs_flops.png"),
        _finetune_plot(results, items, colors, out_dir / "finetune.png"),
        _loss_plot(results, items, colors, out_dir / "loss_curves.png"),
    ]
    return [p for p in written if p is not None]
