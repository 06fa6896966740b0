"""Where a training step's time goes: ``torch.profiler`` over steps of one peer-table row (``peer_table.py``).

Prints the operators sorted by self time (the table the performance notes quote) and the share of matrix
products (``aten::mm``, ``addmm``, ``bmm``, ``linear``'s kernels, the SDPA kernels, convolution) in the total.

Usage::

    python benchmarks/profile_step.py --row d2v1 --threads 2 --steps 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_table import ROWS, build_row, cpu_model  # noqa: E402

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::convolution", "aten::_scaled_dot_product",
          "aten::_flash_attention", "aten::baddbmm", "aten::mkldnn_convolution")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", default="d2v1", choices=list(ROWS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    step, _, _ = build_row(args.row, device, args.precision, args.batch_size)
    step()  # warm-up
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL))
    print(f"# {ROWS[args.row][0]}: {cpu_model()}, {torch.get_num_threads()} threads, {args.precision}, "
          f"batch {args.batch_size}, {args.steps} steps")
    print(f"# matrix products: {100 * mm / max(total, 1):.1f} % of self CPU time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
