"""The benchmark scripts a GPU session runs in one go (benchmarks/gpu_rows.sh) work on the CPU: a script broken by
a change elsewhere would otherwise be found only on a lent device, where minutes are few. gpu_throughput.py's
tiny model through the training loop and the timm peer, and peer_table.py's summary over rounds (medians, the
ratio to the peer within each round)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

gpu_throughput = pytest.importorskip("gpu_throughput")
peer_table = pytest.importorskip("peer_table")


def test_gpu_throughput_tiny_runs_our_engine_and_the_peer_on_the_cpu(tmp_path):
    out = tmp_path / "gt.json"
    rc = gpu_throughput.main(["--device", "cpu", "--tiny", "--engines", "single,peer", "--steps", "1",
                              "--warmup", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert rc == 0, [r["error"] for r in rows]
    assert [r["engine"] for r in rows] == ["single", "peer"] and all(r["ok"] for r in rows)
    assert rows[0]["images_per_s"] > 0 and rows[0]["ratio_vs_peer"] is not None


def test_peer_table_summary_takes_medians_and_the_ratio_within_each_round():
    def row(name, ips):
        return {"row": name, "label": peer_table.ROWS[name][0], "images_per_s": ips, "gflop_per_image": 10.0,
                "peak_memory_mb": 100.0 + ips, "cpu_util": 0.9, "first_step_s": 1.0}

    # round speeds drift: ours / HF is 2.0, 1.5 and 1.0 within the rounds; the median of the ratios is 1.5, not
    # the ratio of the medians (12 / 8)
    rounds = [{"mm_peak_gflops": 100.0, "rows": {"mae": row("mae", 12.0), "mae_hf": row("mae_hf", 6.0)}},
              {"mm_peak_gflops": 200.0, "rows": {"mae": row("mae", 15.0), "mae_hf": row("mae_hf", 10.0)}},
              {"mm_peak_gflops": 100.0, "rows": {"mae": row("mae", 8.0), "mae_hf": row("mae_hf", 8.0)}}]
    for r, same in zip(rounds, (1.4, 1.3, 1.5), strict=True):  # ours and HF stepped alternately in one process
        r["pairs"] = {"mae": {"ratio": same}}
    s = peer_table.summarise(rounds)
    assert s["mae"]["vs_peer_same_process"] == 1.4 and s["mae_hf"]["vs_peer_same_process"] is None
    assert s["mae"]["images_per_s"] == 12.0 and s["mae"]["vs_peer"] == 1.5
    assert s["mae"]["vs_peer_rounds"] == [2.0, 1.5, 1.0] and s["mae_hf"]["vs_peer"] is None
    assert s["mae"]["pct_of_peak"] == pytest.approx(100 * 8.0 * 10 / 100)  # rounds: 120 %, 75 %, 80 % -> 80 %
    assert s["mae"]["peak_memory_mb"] == 115.0
    text = peer_table.table(s, 3)
    assert "1.00-2.00" in text.splitlines()[2] and "1.40  1.30-1.50" in text.splitlines()[2]


def test_malloc_summary_takes_medians_and_the_ratio_within_each_round():
    malloc_cpu = pytest.importorskip("malloc_cpu")
    runs = {"glibc": [{"t": 2.0}, {"t": 3.0}, {"t": 9.0}], "retain": [{"t": 1.0}, {"t": 2.0}, {"t": 3.0}]}
    got = malloc_cpu.summary(runs, "t")
    assert got["glibc"] == 3.0 and got["retain"] == 2.0
    assert got["ratio_rounds"] == [2.0, 1.5, 3.0] and got["glibc_over_retain"] == 2.0  # not 3.0 / 2.0
