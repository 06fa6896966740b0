"""Throughput of one full data2vec 1.0 training step, in images/s and as a fraction of the matmul peak.

One *step* is everything the training loop does per optimizer step (``unimim.train.loop.train_loop``):
student forward on the masked input and EMA-teacher forward on the unmasked input (both inside
``torch.autocast`` for bf16), top-K targets, smooth-L1 loss, backward, gradient clipping + AdamW
(``SingleProcessEngine.step``), and the EMA teacher update. The data are synthetic: one random image batch
on the device and per-image block masks drawn ahead of time with the recipe's mask generator, so neither
data loading nor mask drawing is timed.

Models (built through ``load_recipe`` + ``build_objective``, nothing by hand):

* ``vits16``: ``recipes/image/data2vec_vitb16_in1k.yaml`` with ``encoder.dim=384 encoder.num_heads=6``, i.e. a
  ViT-S/16 at 224 px (depth 12, MLP 4x, patch 16, 3 channels) with the data2vec 1.0 vision settings of that
  recipe: shared relative position bias, ``qkv_bias: qv``, layer scale 0.1, BEiT block masking 120/196
  (~60 %), K = 6, drop path 0.25, attention dropout 0.05.
* ``demo``: ``recipes/image/data2vec_fmnist_cpu.yaml`` as is (the CPU demo model: D 192, depth 6, 28 px,
  patch 4, 1 channel), at its own batch size (256) unless ``--demo-batch-size`` says otherwise.

FLOPs per image (analytic; a multiply-add counts 2; only matrix products are counted: layer norms, GELU,
softmax, the loss, AdamW and the EMA update are ignored). With D = width, Hd = MLP hidden = 4 D, L = depth,
N = patches, T = N + 1 tokens (cls), P = patch side, C = channels::

    embed   = 2 * N * (C * P^2) * D                        patch-embedding convolution
    block   = 2 * T * (4 * D^2 + 2 * D * Hd)               qkv (3 D^2) + out-proj (D^2) + fc1 + fc2
            + 2 * 2 * T^2 * D                              q k^T and attn v (all heads together)
    head    = 2 * N * D^2                                  data2vec regression head (Linear D->D on all N
                                                           positions; 8 N D^2 for the 2-layer text head)
    F_student = embed + L * block + head                   student forward (full sequence, mask tokens in)
    F_teacher = embed + L * block                          teacher forward (no head, no backward)
    step    = 3 * (L * block + head) + 2 * embed + F_teacher

i.e. student forward + backward = 3x its forward (backward = grad w.r.t. inputs + grad w.r.t. weights), except the
patch embedding whose input (the pixels) needs no gradient (2x), plus 1x teacher forward. The relative position
bias is a gather + add, not counted. ``--flop-count`` (on by default) cross-checks this with
``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward (it counts mm/addmm/bmm/convolution and
the SDPA kernels; the CPU flash-attention kernel is added to its registry here).

Achieved FLOP/s = step FLOPs per image x images/s. The peak is measured in the same process with the same thread
count: best GFLOP/s of ``torch.mm`` on square matrices (``--peak-sizes``) over ``--peak-reps`` repetitions, in
fp32 and in bf16; each row is divided by the peak of its own precision (bf16 autocast rows by the bf16 peak, even
though autocast keeps some matmul inputs, e.g. in the fp32 target code, in fp32).

Timing caveat: on a small CPU (2 cores) OpenMP's static work split collapses when another process takes a core;
timings are only meaningful when nothing else runs. The ``cpu util`` column (process CPU time / (wall time x
threads) over the timed steps) and the load average in the JSON show when that happened.

Usage::

    python benchmarks/step_throughput.py --device cpu --threads 2 --batch-size 8 --steps 5 --warmup 3 \\
        --precision fp32,bf16 --models vits16,demo --json benchmarks/results_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimim.core.batch import Batch
from unimim.train.flops import counter as flop_counter

log = logging.getLogger("step_throughput")

REPO_ROOT = Path(__file__).resolve().parent.parent
VITB_RECIPE = REPO_ROOT / "recipes" / "image" / "data2vec_vitb16_in1k.yaml"
DEMO_RECIPE = REPO_ROOT / "recipes" / "image" / "data2vec_fmnist_cpu.yaml"

# model key -> (recipe, overrides, label)
MODELS: dict[str, tuple[Path, list[str], str]] = {
    "vits16": (VITB_RECIPE, ["encoder.dim=384", "encoder.num_heads=6", "encoder.depth=12"], "ViT-S/16 224px"),
    "demo": (DEMO_RECIPE, [], "demo (fmnist cpu)"),
}
CONTENDED_UTIL = 0.85  # cpu util below this over the timed steps: flag the row as disturbed by other processes
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


# -- FLOPs ---------------------------------------------------------------------------------------------------------
@dataclass
class FlopModel:
    """Analytic matmul FLOPs per image (see the module docstring for the formula)."""

    embed: float
    block: float
    head: float
    depth: int

    @property
    def student_forward(self) -> float:
        return self.embed + self.depth * self.block + self.head

    @property
    def teacher_forward(self) -> float:
        return self.embed + self.depth * self.block

    @property
    def step(self) -> float:
        return 3 * (self.depth * self.block + self.head) + 2 * self.embed + self.teacher_forward


def analytic_flops(cfg: Any) -> FlopModel:
    """Matmul FLOPs per image of one data2vec step for an image experiment config."""
    d = cfg.encoder.dim
    hidden = int(d * cfg.encoder.mlp_ratio)
    gh, gw = cfg.adapter.grid
    n = gh * gw
    t = n + (1 if cfg.adapter.cls_token else 0)
    p, c = cfg.adapter.patch_size, cfg.adapter.in_chans
    embed = 2.0 * n * (c * p * p) * d
    block = 2.0 * t * (4 * d * d + 2 * d * hidden) + 2.0 * 2 * t * t * d
    head_layers = getattr(cfg.method, "head_layers", 1)
    head = 2.0 * n * d * d if head_layers == 1 else 2.0 * n * (d * 2 * d + 2 * d * d)
    return FlopModel(embed=embed, block=block, head=head, depth=cfg.encoder.depth)


def counted_flops(objective: torch.nn.Module, engine: Any, batch: Batch) -> float:
    """Total FLOPs FlopCounterMode records over one objective forward + backward (gradients discarded)."""
    with flop_counter() as counter:
        with engine.autocast():
            out = objective(batch)
        engine.backward(out.loss)
    engine.optimizer.zero_grad(set_to_none=True)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    log.info("FlopCounterMode per op: %s", by_op)
    return float(counter.get_total_flops())


# -- peak ----------------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_mm_peak(device: torch.device, dtype: torch.dtype, sizes: list[int], reps: int) -> dict[str, Any]:
    """Best GFLOP/s of ``torch.mm`` (n x n) @ (n x n) over sizes and repetitions (after one warm-up each)."""
    per_size: dict[int, float] = {}
    for n in sizes:
        gen = torch.Generator(device="cpu").manual_seed(n)
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        torch.mm(a, b)
        sync(device)
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        per_size[n] = 2.0 * n**3 / best / 1e9
        log.info("mm peak %s n=%d: %.1f GFLOP/s", dtype, n, per_size[n])
        del a, b
    return {"gflops": max(per_size.values()), "per_size": per_size}


# -- the step ------------------------------------------------------------------------------------------------------
@dataclass
class RowResult:
    model: str
    label: str
    precision: str
    batch: int
    steps: int
    warmup: int
    step_s_median: float
    images_per_s: float
    gflop_per_image_analytic: float
    gflop_per_image_counted: float | None
    achieved_gflops: float
    peak_gflops: float
    fraction_of_peak: float
    cpu_util: float | None
    loss_first: float
    loss_last: float
    step_times_s: list[float] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def make_masks(cfg: Any, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """``steps`` (B, N) bool masks; image i of step s uses ``default_rng([seed, s, i])``."""
    from modalities.image.masking import build_mask_generator

    gen = build_mask_generator(
        cfg.masking, cfg.adapter.grid, patch_size=cfg.adapter.patch_size, image_size=cfg.adapter.image_size
    )
    masks = []
    for s in range(steps):
        rows = [gen(np.random.default_rng([seed, s, i])) for i in range(batch)]  # MaskGenerator protocol
        masks.append(torch.from_numpy(np.stack(rows)))  # (B, N) bool
    return masks


def bench_model(
    key: str,
    precision: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    threads: int,
    peak_gflops: float,
    extra_overrides: list[str],
    flop_count: bool,
    seed: int,
) -> RowResult:
    from unimim.app.experiment import load_recipe
    from unimim.app.registry import build_objective
    from unimim.train.engine import SingleProcessEngine
    from unimim.train.optim import build_optimizer, peak_lr
    from unimim.train.schedules import cosine_with_warmup

    recipe, model_overrides, label = MODELS[key]
    total = warmup + steps
    overrides = [
        *model_overrides,
        f"train.batch_size={batch}",
        f"train.precision={precision}",
        f"train.device={device.type}",
        f"train.steps={total}",
        f"train.seed={seed}",
        *extra_overrides,
    ]
    cfg = load_recipe(recipe, overrides)
    torch.manual_seed(seed)
    objective = build_objective(cfg)
    schedule = cosine_with_warmup(peak_lr(cfg.optim, cfg.effective_batch), cfg.optim.min_lr, total, 1)
    engine = SingleProcessEngine(
        objective, build_optimizer(objective, cfg.optim), schedule, device=device,
        clip_grad=cfg.optim.clip_grad, precision=precision,
    )
    objective.train()
    n_params = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    log.info("%s %s: %.2fM trainable parameters, batch %d, grid %s", key, precision, n_params / 1e6, batch,
             cfg.adapter.grid)

    a = cfg.adapter
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = torch.randn(batch, a.in_chans, a.image_size, a.image_size, generator=gen).to(device)
    masks = [m.to(device) for m in make_masks(cfg, batch, total, seed)]

    times: list[float] = []
    losses: list[float] = []
    cpu_used = 0.0
    for step in range(total):
        batch_in = Batch(inputs=inputs, mask=masks[step])
        sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        with engine.autocast():
            out = objective(batch_in)
        engine.backward(out.loss)
        engine.step(step)
        objective.update_teacher(step + 1)
        loss = float(out.loss.detach())
        sync(device)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        losses.append(loss)
        if not math.isfinite(loss):
            raise RuntimeError(f"{key} {precision}: non-finite loss {loss} at step {step}")
        tag = "warm-up" if step < warmup else "timed"
        log.info("%s %s step %d (%s): %.3f s, loss %.4f", key, precision, step, tag, elapsed, loss)
        if step >= warmup:
            times.append(elapsed)
            cpu_used += cpu

    flops = analytic_flops(cfg)
    counted = None
    if flop_count:
        counted = counted_flops(objective, engine, Batch(inputs=inputs, mask=masks[-1])) / batch
        log.info("%s: FLOPs/image analytic %.4g, FlopCounterMode %.4g (ratio %.4f)", key, flops.step, counted,
                 counted / flops.step)

    median = statistics.median(times)
    util = cpu_used / (sum(times) * threads) if device.type == "cpu" and times else None
    if util is not None and util < CONTENDED_UTIL:
        log.warning("%s %s: the process got %.0f%% of %d threads over the timed steps: another process is "
                    "competing for the CPU, these timings are not meaningful", key, precision, 100 * util, threads)
    ips = batch / median
    achieved = flops.step * ips / 1e9
    return RowResult(
        model=key, label=label, precision=precision, batch=batch, steps=steps, warmup=warmup,
        step_s_median=median, images_per_s=ips,
        gflop_per_image_analytic=flops.step / 1e9,
        gflop_per_image_counted=None if counted is None else counted / 1e9,
        achieved_gflops=achieved, peak_gflops=peak_gflops, fraction_of_peak=achieved / peak_gflops,
        cpu_util=util, loss_first=losses[0], loss_last=losses[-1], step_times_s=times, overrides=overrides,
    )


# -- output --------------------------------------------------------------------------------------------------------
COLUMNS = [
    ("model", 18), ("prec", 5), ("batch", 5), ("step ms", 9), ("img/s", 8), ("GFLOP/img", 9),
    ("counted", 8), ("GFLOP/s", 8), ("peak", 8), ("% peak", 6), ("cpu util", 8),
]


def format_table(rows: list[RowResult]) -> str:
    head = "  ".join(f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [
            r.label, r.precision, str(r.batch), f"{r.step_s_median * 1e3:.0f}", f"{r.images_per_s:.2f}",
            f"{r.gflop_per_image_analytic:.3f}",
            "-" if r.gflop_per_image_counted is None else f"{r.gflop_per_image_counted:.3f}",
            f"{r.achieved_gflops:.1f}", f"{r.peak_gflops:.1f}", f"{100 * r.fraction_of_peak:.1f}",
            "-" if r.cpu_util is None else f"{100 * r.cpu_util:.0f}%",
        ]
        lines.append("  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))))
    return "\n".join(lines)


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": str(device),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_start"] = list(os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="ViT-S/16 batch (default: 8 on cpu, 128 on cuda)")
    p.add_argument("--demo-batch-size", type=int, default=None, help="demo model batch (default: its recipe's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--models", default="vits16,demo", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--peak-sizes", default=None, help="mm sides for the peak (default: 1024,2048 cpu; 4096,8192 cuda)")
    p.add_argument("--peak-reps", type=int, default=5)
    p.add_argument("--no-flop-count", dest="flop_count", action="store_false",
                   help="skip the FlopCounterMode cross-check (one extra forward + backward per model)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra recipe override applied to every model (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    args.precision = [s.strip() for s in args.precision.split(",") if s.strip()]
    args.models = [s.strip() for s in args.models.split(",") if s.strip()]
    for prec in args.precision:
        if prec not in DTYPES:
            p.error(f"unknown precision {prec!r}; choose from {sorted(DTYPES)}")
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {sorted(MODELS)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda but CUDA is not available")
        return 2
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    env = environment(device, threads)
    if env.get("loadavg_start", [0.0])[0] > 0.5 and device.type == "cpu":
        log.warning("1-min load average is %.2f before start: other processes may skew the CPU timings",
                    env["loadavg_start"][0])
    default_sizes = "1024,2048" if device.type == "cpu" else "4096,8192"
    sizes = [int(s) for s in (args.peak_sizes or default_sizes).split(",")]

    peaks = {prec: measure_mm_peak(device, DTYPES[prec], sizes, args.peak_reps) for prec in args.precision}
    vit_batch = args.batch_size or (8 if device.type == "cpu" else 128)
    rows: list[RowResult] = []
    for key in args.models:
        batch = vit_batch if key == "vits16" else args.demo_batch_size
        if batch is None:  # the demo at its recipe's batch size
            from unimim.app.experiment import load_recipe

            batch = load_recipe(MODELS[key][0], MODELS[key][1]).train.batch_size
        for i, prec in enumerate(args.precision):
            rows.append(bench_model(
                key, prec, batch=batch, steps=args.steps, warmup=args.warmup, device=device, threads=threads,
                peak_gflops=peaks[prec]["gflops"], extra_overrides=args.override,
                flop_count=args.flop_count and i == 0, seed=args.seed,
            ))
            if args.flop_count and i > 0:  # FLOPs do not depend on the precision
                rows[-1].gflop_per_image_counted = rows[-2].gflop_per_image_counted
    with contextlib.suppress(OSError):
        env["loadavg_end"] = list(os.getloadavg())

    print(f"# data2vec step throughput: {env.get('cpu_model', env['processor'])}, {threads} threads, "
          f"device {device}{', ' + env['gpu'] if 'gpu' in env else ''}, torch {env['torch']}")
    print("# mm peak (GFLOP/s): " + ", ".join(f"{k} {v['gflops']:.1f}" for k, v in peaks.items()))
    print(format_table(rows))
    if any(r.cpu_util is not None and r.cpu_util < CONTENDED_UTIL for r in rows):
        print(f"# WARNING: cpu util < {100 * CONTENDED_UTIL:.0f}% in some rows: other processes competed for the "
              "CPU; rerun on an idle machine")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "environment": env,
            "command": " ".join(
                ["python", "benchmarks/step_throughput.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "peaks": {k: {"gflops": v["gflops"], "per_size": {str(n): g for n, g in v["per_size"].items()}}
                      for k, v in peaks.items()},
            "results": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2))
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
