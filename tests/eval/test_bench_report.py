"""The benchmark's tables and plots from a hand-written results.json: formatted numbers, csv round trip, PNG files."""

from __future__ import annotations

import copy
import csv
import io
import json

import pytest
from PIL import Image

from unimim.eval.bench.plots import write_plots
from unimim.eval.bench.report import (
    CSV_COLUMNS,
    fmt_flops,
    fmt_interval,
    results_csv,
    results_markdown,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _results() -> dict:
    """3 entries over 2 tasks: an image entry with everything, a failed image entry, a speech entry without
    fine-tune; a raw-input baseline for the image task and one comparison."""
    return {
        "suite": "mixed_cpu", "description": "two modalities under one budget",
        "budget": {"kind": "seconds", "value": 600.0},
        "machine": {"cpu": "Intel(R) Xeon(R) Processor", "threads": 2, "device": "cpu", "torch": "2.11.0"},
        "entries": [
            {"name": "data2vec2", "modality": "image", "objective": "data2vec2", "recipe": "image/d2v2",
             "status": "done", "steps": 500, "samples": 64000, "train_seconds": 301.2, "train_flops": 1.23e15,
             "loss": [{"step": 10, "elapsed_s": 6.1, "flops": 2.4e13, "loss": 1.23},
                      {"step": 20, "elapsed_s": 12.0, "flops": 4.8e13, "loss": 0.9},
                      {"step": 30, "elapsed_s": 18.2, "flops": 7.2e13, "loss": float("nan")}],
             "curve": [{"step": 100, "elapsed_s": 60.1, "flops": 2.4e14, "linear": 0.71, "knn": 0.60},
                       {"step": 500, "elapsed_s": 301.2, "flops": 1.23e15, "linear": 0.8123, "knn": 0.7649}],
             "probe": {"task": "fashion_mnist", "num_test": 10000,
                       "pretrained": {"linear": 0.8123, "knn": 0.7649}, "random": {"linear": 0.742, "knn": 0.571},
                       "gain": {"diff": 0.0703, "low": 0.0651, "high": 0.0782, "level": 0.95},
                       "vs_raw": {"diff": -0.0307, "low": -0.0362, "high": -0.0244, "level": 0.95}},
             "finetune": {"task": "fashion_mnist", "metric": "top1", "higher_is_better": True, "num_test": 10000,
                          "pretrained": 0.634, "random": 0.387,
                          "train_seconds": {"pretrained": 51.0, "random": 50.2},
                          "gain": {"diff": 0.247, "low": 0.2361, "high": 0.2574, "level": 0.95}}},
            {"name": "mae", "modality": "image", "objective": "mae", "recipe": "image/mae", "status": "failed",
             "error": "non-finite loss at step 12\n(last good checkpoint: none)", "steps": None, "probe": None,
             "finetune": None, "loss": None, "curve": []},
            {"name": "d2v_speech", "modality": "speech", "objective": "data2vec", "recipe": "speech/d2v",
             "status": "done", "steps": 2000, "samples": 16000, "train_seconds": 599.0, "train_flops": 3.0e14,
             "loss": [{"step": 50, "elapsed_s": 15.0, "loss": 4.5}, {"step": 100, "elapsed_s": 30.0, "loss": 3.1}],
             "curve": [],
             "probe": {"task": "speech_commands", "num_test": 2000,
                       "pretrained": {"linear": 0.455, "knn": 0.301}, "random": {"linear": 0.402, "knn": 0.288},
                       "gain": {"diff": 0.053, "low": 0.0312, "high": 0.0748, "level": 0.95}, "vs_raw": None},
             "finetune": None},
        ],
        "baselines": {"image/fashion_mnist": {"modality": "image", "task": "fashion_mnist",
                                              "features": "raw pixels (784-d)", "linear": 0.843, "knn": 0.846,
                                              "num_test": 10000}},
        "comparisons": [{"task": "image/fashion_mnist", "evaluation": "probe", "a": "data2vec2", "b": "mae",
                         "diff": 0.03, "low": 0.02, "high": 0.04, "level": 0.95}],
    }


def test_formatting_helpers():
    assert fmt_interval({"diff": 0.0703, "low": 0.0651, "high": 0.0782}) == "+7.0 [+6.5, +7.8]"
    assert fmt_interval({"diff": -0.0307, "low": -0.0362, "high": -0.0244}) == "-3.1 [-3.6, -2.4]"
    assert fmt_interval({"diff": 0.012}) == "+1.2"
    assert fmt_interval(None) == fmt_interval({"diff": None}) == fmt_interval({"diff": "x"}) == "–"
    assert fmt_flops(1.23e15) == "1.2e15" and fmt_flops(3.0e14) == "3.0e14" and fmt_flops(None) == "–"


def test_markdown_tables_numbers_baseline_and_errors():
    md = results_markdown(_results())
    lines = md.splitlines()
    assert lines[0].startswith("# Benchmark mixed_cpu: 600 s (10.0 min) of training per entry, on Intel(R) Xeon(R)")
    assert "2 threads, cpu, torch 2.11.0" in lines[0]
    assert "## image / fashion_mnist" in md and "## speech / speech_commands" in md
    row = next(line for line in lines if line.startswith("| data2vec2 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # entry, objective, steps, train min (301.2 s), FLOPs, linear %, Δ random, Δ raw, kNN %, ft top1 %, Δ scratch
    assert cells == ["data2vec2", "data2vec2", "500", "5.0", "1.2e15", "81.2", "+7.0 [+6.5, +7.8]",
                     "-3.1 [-3.6, -2.4]", "76.5", "63.4", "+24.7 [+23.6, +25.7]"]
    raw = [c.strip() for c in next(line for line in lines if line.startswith("| raw input ")).strip("|").split("|")]
    assert raw == ["raw input", "raw pixels (784-d)", "–", "–", "–", "84.3", "–", "–", "84.6", "–", "–"]
    failed = [c.strip() for c in next(line for line in lines if line.startswith("| mae ")).strip("|").split("|")]
    assert failed[0] == "mae (failed)" and set(failed[2:]) == {"–"}
    assert "- **mae** failed: non-finite loss at step 12 (last good checkpoint: none)" in md
    speech = [c.strip() for c in next(line for line in lines if line.startswith("| d2v_speech ")).strip("|").split("|")]
    assert speech[5:] == ["45.5", "+5.3 [+3.1, +7.5]", "–", "30.1", "–", "–"]
    assert md.count("95 % paired bootstrap") == 2 and "over the 10,000 test examples" in md
    assert "over the 2,000 test examples" in md
    assert "- image/fashion_mnist, probe: data2vec2 − mae = +3.0 [+2.0, +4.0] points (data2vec2 is better)" in md


def test_markdown_tables_have_aligned_pipes():
    md = results_markdown(_results())
    tables = [block.splitlines() for block in md.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 2
    for table in tables:
        assert len({len(line) for line in table}) == 1  # every line of a table equally wide
        pipes = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in table}
        assert len(pipes) == 1  # pipes at the same columns
        assert set(table[1]) <= set("|-: ")  # the header rule
        assert table[1].count("|") == table[0].count("|") == 12


def test_markdown_never_crashes_on_sparse_entries():
    results = {"entries": [{"name": "x", "status": "pending"}, {"status": "failed", "probe": {"gain": "bad"}},
                           "not an entry", {"name": "y", "modality": "text", "steps": "many", "train_flops": "nan",
                                            "probe": {"task": "sst2", "pretrained": None}}]}
    md = results_markdown(results)
    assert "x (pending)" in md and "- **x** is pending" in md and "## text / sst2" in md
    assert "budget unknown" in md.splitlines()[0]
    assert results_markdown({}).splitlines()[0].startswith("# Benchmark –")
    with pytest.raises(ValueError, match="must be a JSON object"):
        results_markdown([])


def test_csv_round_trip():
    rows = list(csv.DictReader(io.StringIO(results_csv(_results()))))
    assert [r["name"] for r in rows] == ["data2vec2", "mae", "d2v_speech"]
    assert tuple(rows[0]) == CSV_COLUMNS
    d2v, mae, speech = rows
    assert d2v["task"] == "image/fashion_mnist" and d2v["status"] == "done" and d2v["steps"] == "500"
    assert float(d2v["train_flops"]) == 1.23e15 and float(d2v["train_seconds"]) == 301.2
    assert float(d2v["probe_linear"]) == 0.8123 and float(d2v["random_knn"]) == 0.571
    assert (float(d2v["probe_gain"]), float(d2v["probe_gain_low"]), float(d2v["probe_gain_high"])) == (
        0.0703, 0.0651, 0.0782)
    assert float(d2v["raw_linear"]) == 0.843 and float(d2v["vs_raw_low"]) == -0.0362
    assert d2v["finetune_metric"] == "top1" and float(d2v["finetune_gain_high"]) == 0.2574
    assert mae["status"] == "failed" and mae["task"] == "image/fashion_mnist"  # joins its modality's only task
    assert mae["error"] == "non-finite loss at step 12 (last good checkpoint: none)"
    assert all(mae[c] == "" for c in ("steps", "probe_linear", "probe_gain", "finetune_metric", "finetune_gain"))
    assert mae["raw_linear"] == "0.843"  # the baseline of its task
    assert speech["task"] == "speech/speech_commands" and speech["raw_linear"] == "" and speech["vs_raw"] == ""
    assert speech["finetune_pretrained"] == "" and float(speech["probe_gain"]) == 0.053


def test_write_report_writes_both_files(tmp_path):
    paths = write_report(json.loads(json.dumps(_results())), tmp_path / "out")
    assert [p.name for p in paths] == ["results.md", "results.csv"]
    assert paths[0].read_text(encoding="utf-8") == results_markdown(_results())
    assert paths[1].read_text(encoding="utf-8") == results_csv(_results())


def _check_png(path, min_size=(300, 200)):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= min_size[0] and img.height >= min_size[1]
        return img.size


def test_plots_are_written_as_png(tmp_path):
    paths = write_plots(_results(), tmp_path / "plots")
    assert [p.name for p in paths] == ["probe_vs_time.png", "probe_vs_flops.png", "finetune.png", "loss_curves.png"]
    sizes = {p.name: _check_png(p) for p in paths}
    # two tasks with probe results -> two panels side by side; one fine-tune task -> one panel; two loss curves
    assert sizes["probe_vs_time.png"][0] > 1.5 * sizes["finetune.png"][0]
    assert sizes["loss_curves.png"][0] > 1.5 * sizes["finetune.png"][0]


def test_plots_are_skipped_without_data(tmp_path):
    results = _results()
    for e in results["entries"]:
        e["curve"], e["loss"], e["finetune"] = [], [], None
        e.pop("train_flops", None)
    # no curve: the final probe at the entry's train time is the only point; no FLOPs -> no FLOPs plot
    assert [p.name for p in write_plots(results, tmp_path / "a")] == ["probe_vs_time.png"]
    bare = copy.deepcopy(results)
    for e in bare["entries"]:
        e["probe"] = None
    assert write_plots(bare, tmp_path / "b") == []
    assert not list((tmp_path / "b").iterdir())
    assert write_plots({"entries": [{"name": "x", "status": "pending"}, 3]}, tmp_path / "c") == []
