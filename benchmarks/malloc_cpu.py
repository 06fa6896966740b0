"""glibc's allocator thresholds and the CPU training step (``train.retain_freed_memory``, unimim.train.host_memory).

With glibc's defaults a CPU tensor above the mmap threshold (dynamic, at most 32 MiB) is mapped afresh at every
allocation and its pages are faulted in on first write; raising the mmap and trim thresholds keeps freed buffers for
reuse. Every measurement runs in fresh processes, untouched glibc defaults against retain, alternating over
``--rounds`` (the effect depends on the heap's history, so the two settings cannot share a process: after retain has
grown the heap, glibc reuses those free chunks whatever the thresholds are set to later):

- ``ops``: GELU and an add on a data2vec 2.0 decoder-sized (128, 768, 14, 14) and an encoder-sized (128, 40, 1536)
  bf16 tensor;
- ``rows``: each row's training step (ViT-S/16, batch 8, bf16 autocast, the rows of ``peer_table.py``), its median
  time and the process's peak resident set size (the setting keeps the peak heap mapped: this shows what that
  costs).

    python benchmarks/malloc_cpu.py --threads 2 --json benchmarks/results_malloc_cpu_xeon.json   # ~15 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_table import ROWS, build_row, cpu_model, run_child  # noqa: E402

from unimim.train.host_memory import RETAIN_BYTES, is_glibc, set_malloc_thresholds  # noqa: E402

log = logging.getLogger("malloc_cpu")
DEFAULT_ROWS = "d2v1,d2v1_hf,mae,mae_hf,d2v2_r8,d2v2_r16"


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ops(reps: int) -> dict[str, float]:
    """Median ms of GELU and add per tensor, in this process as it is set."""
    tensors = {"decoder (128, 768, 14, 14)": torch.randn(128, 768, 14, 14, dtype=torch.bfloat16),
               "encoder (128, 40, 1536)": torch.randn(128, 40, 1536, dtype=torch.bfloat16)}
    out: dict[str, float] = {}
    for name, x in tensors.items():
        for op, fn in (("gelu", lambda x=x: F.gelu(x)), ("add", lambda x=x: x + x)):
            times = [timed(fn) for _ in range(2 + reps)][2:]
            out[f"{op} {name}"] = 1e3 * float(np.median(times))
    return out


def row_step(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """The row's median step time in this process as it is set, and the process's peak RSS."""
    step, _, _ = build_row(row, torch.device("cpu"), "bf16", args.batch_size)
    times = [timed(step) for _ in range(args.warmup + args.steps)][args.warmup:]
    return {"step_s_median": float(np.median(times)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_s": times}


def own_process(what: str, setting: str, args: argparse.Namespace) -> dict[str, Any]:
    """Internal: ``ops`` or one row in this process, glibc untouched or retain set before anything is allocated."""
    if setting == "retain" and not set_malloc_thresholds(RETAIN_BYTES, RETAIN_BYTES):
        raise SystemExit("glibc refused mallopt")
    return {"ms": ops(reps=10)} if what == "ops" else row_step(what, args)


def summary(runs: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Medians per setting over the rounds, and glibc / retain within each round (its median and range)."""
    med = {s: float(np.median([r[key] for r in v])) for s, v in runs.items()}
    ratios = [g[key] / r[key] for g, r in zip(runs["glibc"], runs["retain"])]
    return {"glibc": med["glibc"], "retain": med["retain"], "glibc_over_retain": float(np.median(ratios)),
            "ratio_rounds": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma list of {', '.join(ROWS)}")
    p.add_argument("--sections", default="ops,rows")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="each (row, setting) this many times, alternating")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--own", nargs=2, default=None, help=argparse.SUPPRESS)  # internal: ops|ROW glibc|retain
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not is_glibc():
        raise SystemExit("malloc_cpu.py measures glibc's allocator; this interpreter does not run on glibc")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.own is not None:
        print("ROW " + json.dumps(own_process(*args.own, args)), flush=True)
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for row in rows:
        if row not in ROWS:
            p.error(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
    sections = args.sections.split(",")
    result: dict[str, Any] = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds, "runs": {}}
    jobs = (["ops"] if "ops" in sections else []) + (rows if "rows" in sections else [])

    for k in range(args.rounds):  # the host drifts: the settings alternate, their order swapped every round
        for what in jobs:
            for setting in (("glibc", "retain") if k % 2 == 0 else ("retain", "glibc")):
                got = run_child(__file__, ["--own", what, setting, "--batch-size", str(args.batch_size), "--steps",
                                           str(args.steps), "--warmup", str(args.warmup)], args.threads,
                                f"{what} ({setting})")
                result["runs"].setdefault(what, {"glibc": [], "retain": []})[setting].append(got)
                log.info("round %d, %s %s: %s", k + 1, what, setting,
                         {n: round(v, 2) for n, v in got["ms"].items()} if what == "ops"
                         else f"{got['step_s_median']:.3f} s/step, peak RSS {got['peak_rss_mb']:.0f} MB")
                if args.json is not None:
                    args.json.write_text(json.dumps(result, indent=1) + "\n")
    runs = result["runs"]
    if "ops" in runs:
        result["ops_ms"] = {name: summary({s: [r["ms"] for r in v] for s, v in runs["ops"].items()}, name)
                            for name in runs["ops"]["glibc"][0]["ms"]}
    result["rows"] = {row: {"step_s": summary(runs[row], "step_s_median"),
                            "peak_rss_mb": summary(runs[row], "peak_rss_mb")} for row in rows if row in runs}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['cpu']}, torch {result['torch']}, {result['threads']} threads, {args.rounds} rounds (medians)")
    print("| what | glibc | retain | glibc / retain (range) | peak RSS MB, glibc / retain |")
    print("|---|---:|---:|---:|---:|")
    for name, r in result.get("ops_ms", {}).items():
        rng = f"{min(r['ratio_rounds']):.2f}-{max(r['ratio_rounds']):.2f}"
        print(f"| {name}, ms | {r['glibc']:.2f} | {r['retain']:.2f} | {r['glibc_over_retain']:.2f} ({rng}) | - |")
    for row, r in result["rows"].items():
        t, m = r["step_s"], r["peak_rss_mb"]
        rng = f"{min(t['ratio_rounds']):.2f}-{max(t['ratio_rounds']):.2f}"
        print(f"| {ROWS[row][0]}, s/step | {t['glibc']:.3f} | {t['retain']:.3f} | {t['glibc_over_retain']:.2f} ({rng}) "
              f"| {m['glibc']:,.0f} / {m['retain']:,.0f} |")


if __name__ == "__main__":
    main()
