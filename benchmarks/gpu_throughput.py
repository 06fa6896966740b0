"""One-device throughput of the data2vec 1.0 ViT-B/16 recipe through our two engines, against a plain ViT-B/16
training step of a peer library (timm), in one process.

What is timed, per row, is one full optimizer step of ``unimim.train.loop.train_loop`` itself (the loop the
``pretrain`` command runs, with ``train.accumulate=1``): student forward on the masked input and EMA-teacher forward
on the clean input under ``engine.autocast()``, top-K targets, smooth-L1 loss, ``engine.backward``, ``engine.step``
(clipping at ``optim.clip_grad`` + AdamW with the recipe's two weight-decay groups) and the EMA teacher update.

Rows (``--engines``):

* ``single``: :class:`unimim.train.engine.SingleProcessEngine`, built as ``unimim.train.run.pretrain`` builds it.
* ``ds0`` / ``ds2``: :class:`unimim.train.ds_engine.DeepSpeedEngine` with ZeRO stage 0 / 2, built by
  ``unimim.train.run._build_deepspeed`` (its generated DeepSpeed config: bf16, clipping 3.0, the recipe's torch
  AdamW) in a world of one: without a launcher ``unimim.train.distributed.ensure_launch_env`` sets RANK=0,
  WORLD_SIZE=1, LOCAL_RANK=0 and MASTER_ADDR/PORT (loopback, a free port) in-process; NCCL on CUDA, gloo with
  ``DS_ACCELERATOR=cpu`` (set here for ``--device cpu``).
* ``peer``: timm ``vit_base_patch16_224`` (random init, nothing downloaded), built with the recipe's encoder
  dimensions (identical to timm's defaults for the ViT-B/16 recipe; the tiny ones with ``--tiny``): forward,
  cross-entropy on random labels, backward, ``torch.optim.AdamW`` step, in the same autocast dtype, on the same
  input batches. No masking, no teacher, no clipping: the plain supervised step.

The model is ``recipes/image/data2vec_vitb16_in1k.yaml`` (ViT-B/16 at 224 px, relative position bias, layer scale,
drop path 0.25, attention dropout 0.05, block masking 120/196, K = 6) with ``data.source=synthetic``. The input
batches come from the recipe's own data pipeline (``MODALITIES[...].build_pretrain_source`` + ``make_loader``:
random-resized crops, flips, normalisation, block masks drawn per image), ``--distinct-batches`` of them drawn
once before timing, put on the device and cycled, so data loading is not timed.

Timing: ``--warmup`` untimed steps, then ``--steps`` timed ones. The loop reads the loss as a Python float every
step (one host sync per step); the batch iterator synchronises the device and takes a timestamp each time the
loop asks for the next batch, so a step's time runs from one request to the next (the last one ends after a final
sync). The peer step reads its loss the same way. Reported: median ms/step, images/s (batch / median step), mean
images/s, peak device memory of the row (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
``mem start`` is what earlier rows left allocated), analytic matmul TFLOP/s (FLOPs per image as in
``benchmarks/step_throughput.py``: the data2vec step ~ 3x student forward + 1x teacher forward, the plain step
3x forward) and two ratios against the peer row of the same TF32 setting: ``ours/peer`` in images/s (the headline;
~0.7 is what the extra teacher forward alone costs) and the same in achieved FLOP/s (1.0 = as efficient per FLOP as
the plain step).

On CUDA every engine runs once per ``--tf32`` setting (``torch.backends.cuda.matmul.allow_tf32``; PyTorch's
default and our engines' is off; under bf16 autocast it only affects the matmuls autocast leaves in fp32).
Each row is independent: a failing row (e.g. DeepSpeed not initialising, out of memory) is logged and recorded with
its error, and the others still run; the JSON (``--out``) is rewritten after every row, so a run cut short keeps the
rows it finished.

Usage::

    python benchmarks/gpu_throughput.py --device cuda --out /tmp/gpu_throughput.json          # B 128, bf16
    DS_ACCELERATOR=cpu python benchmarks/gpu_throughput.py --device cpu --tiny --out /tmp/gpu_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from step_throughput import DTYPES, analytic_flops, sync  # noqa: E402

log = logging.getLogger("gpu_throughput")

RECIPE = ROOT / "recipes" / "image" / "data2vec_vitb16_in1k.yaml"
# a tiny model for checking the script on a CPU (same recipe, same code paths, seconds per row)
TINY_OVERRIDES = [
    "encoder.dim=64", "encoder.depth=2", "encoder.num_heads=2", "method.top_k=2",
    "adapter.image_size=32", "adapter.patch_size=8", "data.image_size=32", "masking.min_block=2",
]
ENGINES = ("peer", "single", "ds0", "ds2")
PEER_MODEL = "vit_base_patch16_224"
PEER_CLASSES = 1000


# -- device helpers ------------------------------------------------------------------------------------------------
def set_tf32(device: torch.device, on: bool) -> bool:
    """Set ``torch.backends.cuda.matmul.allow_tf32`` on CUDA; returns the value read back (False on CPU)."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = on
    return bool(torch.backends.cuda.matmul.allow_tf32)


def release(device: torch.device) -> float | None:
    """Free what the previous row left; returns the GiB still allocated (None on CPU)."""
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**30


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# -- config and data -----------------------------------------------------------------------------------------------
def recipe_overrides(args: argparse.Namespace, out_dir: str, device: torch.device) -> list[str]:
    return [
        *(TINY_OVERRIDES if args.tiny else []),
        "data.source=synthetic", f"data.synthetic_size={args.batch_size * args.distinct_batches}",
        f"train.batch_size={args.batch_size}", "train.accumulate=1", f"train.precision={args.precision}",
        f"train.device={device.type}", f"train.steps={args.warmup + args.steps}", f"train.seed={args.seed}",
        "train.num_workers=0", f"train.out_dir={out_dir}", "train.resume=false",
        *args.override,
    ]


def load_cfg(overrides: list[str]) -> Any:
    from unimim.app.experiment import load_recipe

    return load_recipe(RECIPE, overrides)


def make_batches(cfg: Any, n: int, device: torch.device) -> list[Any]:
    """``n`` batches of the recipe's data pipeline (synthetic source), on ``device``."""
    from unimim.app.registry import MODALITIES
    from unimim.train.data import make_loader

    spec = MODALITIES[cfg.modality]
    source = spec.build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
    loader = make_loader(source, batch_size=cfg.train.batch_size, seed=cfg.train.seed, num_workers=0,
                         collate_fn=source.collate)
    it = iter(loader)
    batches = []
    for _ in range(n):
        batches.append(next(it).to(device))
    shapes = {k: tuple(v.shape) for k, v in vars(batches[0]).items() if torch.is_tensor(v)}
    masked = float(batches[0].mask.float().mean())
    log.info("data: %d batches of %s, masked fraction %.3f", n, shapes, masked)
    return batches


class TimedBatches:
    """Cycles ``batches``; each request marks the end of the previous step (after a device sync)."""

    def __init__(self, batches: list[Any], device: torch.device) -> None:
        self.batches, self.device, self.marks = batches, device, []

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> Any:
        sync(self.device)
        self.marks.append(time.perf_counter())
        return self.batches[(len(self.marks) - 1) % len(self.batches)]  # a Batch (the loop does not modify it)

    def finish(self) -> list[float]:
        """All step times in seconds (call after the last step)."""
        sync(self.device)
        self.marks.append(time.perf_counter())
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


# -- FLOPs ---------------------------------------------------------------------------------------------------------
def flops_per_image(cfg: Any) -> dict[str, float]:
    """Analytic matmul FLOPs per image of the data2vec step and of the plain classification step."""
    f = analytic_flops(cfg)
    plain = 3 * (f.depth * f.block + 2.0 * cfg.encoder.dim * PEER_CLASSES) + 2 * f.embed
    return {"data2vec": f.step, "plain": plain}


# -- rows ----------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    engine: str
    label: str
    tf32: bool
    precision: str
    batch: int
    warmup: int
    steps: int
    ok: bool = False
    error: str | None = None
    step_ms_median: float | None = None
    images_per_s: float | None = None
    images_per_s_mean: float | None = None
    peak_mem_gib: float | None = None
    mem_start_gib: float | None = None
    gflop_per_image: float | None = None
    achieved_tflops: float | None = None
    ratio_vs_peer: float | None = None
    flop_ratio_vs_peer: float | None = None
    params_m: float | None = None
    build_s: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    step_times_s: list[float] = field(default_factory=list)
    ds_optimizer: str | None = None  # the optimizer wrapper DeepSpeed chose (ZeRO stage, precision)
    ds_config: dict[str, Any] | None = None


def run_ours(kind: str, args: argparse.Namespace, device: torch.device, batches: list[Any],
             out_dir: str) -> tuple[list[float], list[float], dict[str, Any]]:
    """Our engines through ``train_loop``; returns (step times, losses, info)."""
    from unimim.app.registry import build_objective
    from unimim.train.engine import SingleProcessEngine
    from unimim.train.loop import train_loop
    from unimim.train.metrics import NullMetrics
    from unimim.train.optim import build_optimizer, peak_lr
    from unimim.train.run import _build_deepspeed, seed_everything
    from unimim.train.schedules import cosine_with_warmup

    overrides = recipe_overrides(args, out_dir, device)
    if kind != "single":
        overrides += ["deepspeed.enabled=true", f"deepspeed.zero_stage={kind.removeprefix('ds')}"]
    cfg = load_cfg(overrides)
    total = cfg.train.steps
    seed_everything(cfg.train.seed)
    objective = build_objective(cfg)
    info: dict[str, Any] = {"params_m": sum(p.numel() for p in objective.parameters() if p.requires_grad) / 1e6}
    schedule = cosine_with_warmup(peak_lr(cfg.optim, cfg.effective_batch), cfg.optim.min_lr, total,
                                  cfg.optim.warmup_steps)
    if kind == "single":
        engine = SingleProcessEngine(
            objective, build_optimizer(objective, cfg.optim), schedule, device=device,
            accumulate=cfg.train.accumulate, clip_grad=cfg.optim.clip_grad, precision=cfg.train.precision,
        )
    else:
        engine = _build_deepspeed(cfg, objective, schedule)
        info["ds_config"] = json.loads((cfg.run_dir / "deepspeed_config.json").read_text())
        info["ds_optimizer"] = type(engine.ds.optimizer).__name__
        log.info("%s: DeepSpeed optimizer %s on %s", kind, info["ds_optimizer"], engine.device)
    timed = TimedBatches(batches, device)
    losses = train_loop(
        objective, engine, timed, start_step=0, total_steps=total, accumulate=cfg.train.accumulate,
        samples_per_step=cfg.train.batch_size, log_every=max(total, 1), checkpoint_every=10**9,
        save=lambda step: "not saved (benchmark)", metrics=NullMetrics(), progress=False,
    )
    times = timed.finish()
    if kind != "single":
        engine.ds.destroy()
    return times, losses, info


def run_peer(args: argparse.Namespace, device: torch.device, batches: list[Any], cfg: Any
             ) -> tuple[list[float], list[float], dict[str, Any]]:
    """timm's ViT-B/16 (the recipe's dimensions), plain supervised step on the same inputs."""
    import timm
    import torch.nn.functional as F

    e, a = cfg.encoder, cfg.adapter
    dims = dict(img_size=a.image_size, patch_size=a.patch_size, in_chans=a.in_chans, embed_dim=e.dim,
                depth=e.depth, num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, num_classes=PEER_CLASSES)
    torch.manual_seed(args.seed)
    model = timm.create_model(PEER_MODEL, pretrained=False, **dims).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    labels = [torch.randint(0, PEER_CLASSES, (b.inputs.shape[0],), generator=gen).to(device) for b in batches]
    autocast = (contextlib.nullcontext() if args.precision == "fp32"
                else torch.autocast(device_type=device.type, dtype=DTYPES[args.precision]))
    timed = TimedBatches([{"inputs": b.inputs, "labels": y} for b, y in zip(batches, labels)], device)
    losses = []
    for _ in range(args.warmup + args.steps):
        batch = next(timed)
        with autocast:
            logits = model(batch["inputs"])  # (B, classes)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # one host sync per step, as our loop does
    times = timed.finish()
    info = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "timm_kwargs": dims,
            "timm_version": timm.__version__}
    return times, losses, info


LABELS = {
    "peer": f"timm {PEER_MODEL} (plain)",
    "single": "ours: SingleProcessEngine",
    "ds0": "ours: DeepSpeed ZeRO-0",
    "ds2": "ours: DeepSpeed ZeRO-2",
}


def bench_row(kind: str, tf32: bool, args: argparse.Namespace, device: torch.device, batches: list[Any],
              flops: dict[str, float], cfg: Any) -> Row:
    row = Row(engine=kind, label=LABELS[kind], tf32=tf32, precision=args.precision, batch=args.batch_size,
              warmup=args.warmup, steps=args.steps)
    row.mem_start_gib = release(device)
    row.tf32 = set_tf32(device, tf32)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_throughput_") as out_dir:
            if kind == "peer":
                times, losses, info = run_peer(args, device, batches, cfg)
            else:
                times, losses, info = run_ours(kind, args, device, batches, out_dir)
    except Exception as err:  # one failing row must not lose the others
        log.error("%s (tf32=%s) failed:\n%s", kind, tf32, traceback.format_exc())
        row.error = f"{type(err).__name__}: {err}"
        row.peak_mem_gib = peak_gib(device)
        return row
    timed = times[args.warmup:]
    median = statistics.median(timed)
    row.ok = True
    row.build_s = time.perf_counter() - t0 - sum(times)
    row.step_times_s = timed
    row.step_ms_median = 1e3 * median
    row.images_per_s = args.batch_size / median
    row.images_per_s_mean = args.batch_size * len(timed) / sum(timed)
    row.peak_mem_gib = peak_gib(device)
    row.gflop_per_image = (flops["plain"] if kind == "peer" else flops["data2vec"]) / 1e9
    row.achieved_tflops = row.gflop_per_image * row.images_per_s / 1e3
    row.params_m = info.get("params_m")
    row.ds_config = info.get("ds_config")
    row.ds_optimizer = info.get("ds_optimizer")
    row.loss_first, row.loss_last = losses[0], losses[-1]
    log.info("%s tf32=%s: %.1f ms/step, %.1f img/s, peak %s GiB, loss %.4f -> %.4f", kind, row.tf32,
             row.step_ms_median, row.images_per_s, "-" if row.peak_mem_gib is None else f"{row.peak_mem_gib:.2f}",
             row.loss_first, row.loss_last)
    return row


def add_ratios(rows: list[Row]) -> None:
    peers = {r.tf32: r for r in rows if r.engine == "peer" and r.ok}
    for r in rows:
        peer = peers.get(r.tf32)
        if r.ok and peer is not None and r.engine != "peer":
            r.ratio_vs_peer = r.images_per_s / peer.images_per_s
            r.flop_ratio_vs_peer = r.achieved_tflops / peer.achieved_tflops


# -- output --------------------------------------------------------------------------------------------------------
COLUMNS = [("row", 32), ("tf32", 4), ("batch", 5), ("ms/step", 8), ("img/s", 8), ("peak GiB", 8), ("mem start", 9),
           ("TFLOP/s", 7), ("ours/peer", 9), ("flop ratio", 10)]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[Row]) -> str:
    head = "  ".join(f"{n:>{w}}" if i else f"{n:<{w}}" for i, (n, w) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.ok:
            cells = [r.label, "on" if r.tf32 else "off", str(r.batch), "FAILED", "", "", "", "", "", ""]
        else:
            cells = [r.label, "on" if r.tf32 else "off", str(r.batch), _fmt(r.step_ms_median, ".1f"),
                     _fmt(r.images_per_s, ".1f"), _fmt(r.peak_mem_gib, ".2f"), _fmt(r.mem_start_gib, ".2f"),
                     _fmt(r.achieved_tflops, ".1f"), _fmt(r.ratio_vs_peer, ".3f"), _fmt(r.flop_ratio_vs_peer, ".3f")]
        lines.append("  ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))))
    for r in rows:
        if not r.ok:
            lines.append(f"# {r.label} (tf32 {'on' if r.tf32 else 'off'}) failed: {r.error}")
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
        "ds_accelerator_env": os.environ.get("DS_ACCELERATOR"),
    }
    with contextlib.suppress(Exception):
        import deepspeed

        info["deepspeed"] = deepspeed.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return info


def write_json(path: Path, args: argparse.Namespace, argv: list[str], env: dict[str, Any], flops: dict[str, float],
               rows: list[Row], done: bool) -> None:
    payload = {
        "environment": env, "complete": done,
        "command": " ".join(["python", "benchmarks/gpu_throughput.py", *argv]),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "overrides": recipe_overrides(args, "<tmp>", torch.device(args.device)),
        "gflop_per_image": {k: v / 1e9 for k, v in flops.items()},
        "results": [asdict(r) for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny model (D 64, depth 2, 32 px) to check the script")
    p.add_argument("--batch-size", type=int, default=None, help="per step (default: 128 on cuda, 8 on cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default: 10 cuda, 2 cpu)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 50 cuda, 3 cpu)")
    p.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)}")
    p.add_argument("--tf32", default=None, help="comma list of off,on (cuda only; default off,on on cuda)")
    p.add_argument("--distinct-batches", type=int, default=2, help="input batches drawn before timing, cycled")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra recipe override for every row (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or (128 if cuda else 8)
    args.warmup = (10 if cuda else 2) if args.warmup is None else args.warmup
    args.steps = args.steps or (50 if cuda else 3)
    args.engines = [s.strip() for s in args.engines.split(",") if s.strip()]
    for e in args.engines:
        if e not in ENGINES:
            p.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    tf32 = [s.strip() for s in (args.tf32 or ("off,on" if cuda else "off")).split(",") if s.strip()]
    if any(s not in ("off", "on") for s in tf32):
        p.error("--tf32 takes a comma list of off, on")
    args.tf32 = [s == "on" for s in tf32] if cuda else [False]
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.distinct_batches < 1:
        p.error("--steps, --batch-size and --distinct-batches must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda but CUDA is not available")
        return 2
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported: its gloo/CPU accelerator
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)

    cfg = load_cfg(recipe_overrides(args, tempfile.gettempdir(), device))
    flops = flops_per_image(cfg)
    log.info("model: D %d, depth %d, heads %d, %d px / patch %d; %.2f GFLOP/image data2vec step, %.2f plain step",
             cfg.encoder.dim, cfg.encoder.depth, cfg.encoder.num_heads, cfg.adapter.image_size, cfg.adapter.patch_size,
             flops["data2vec"] / 1e9, flops["plain"] / 1e9)
    batches = make_batches(cfg, args.distinct_batches, device)

    rows: list[Row] = []
    for tf32 in args.tf32:
        for kind in args.engines:
            rows.append(bench_row(kind, tf32, args, device, batches, flops, cfg))
            add_ratios(rows)
            if args.out is not None:
                write_json(args.out, args, argv, env, flops, rows, done=False)
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    title = env.get("gpu", platform.processor() or platform.machine())
    print(f"# data2vec 1.0 ViT-B/16 recipe{' (--tiny)' if args.tiny else ''}, {args.precision}, batch "
          f"{args.batch_size}, {args.steps} timed steps after {args.warmup}; {title}, torch {env['torch']}"
          f"{', deepspeed ' + env['deepspeed'] if 'deepspeed' in env else ''}")
    print(f"# GFLOP/image: data2vec step {flops['data2vec'] / 1e9:.2f}, plain step {flops['plain'] / 1e9:.2f} "
          f"(FLOP-only expectation for ours/peer: {flops['plain'] / flops['data2vec']:.3f})")
    print(format_table(rows))
    if args.out is not None:
        write_json(args.out, args, argv, env, flops, rows, done=True)
        log.info("wrote %s", args.out)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
