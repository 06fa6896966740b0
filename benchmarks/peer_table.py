"""The peer table: one training step of unimim's objectives against the Hugging Face peers, in one run.

Rows (ViT-S/16 at 224 px by default, batch 8, bf16 autocast on the CPU, SDPA attention, AdamW, grad clipping):

* ``mae`` vs ``mae_hf``: unimim MAE (``recipes/image/mae_vitb16_in1k.yaml`` at width 384: 75 % random masking,
  decoder 8 x 512, norm_pix_loss) against ``transformers.ViTMAEForPreTraining`` with the same sizes.
* ``d2v1`` vs ``d2v1_hf``: unimim data2vec 1.0 (``recipes/image/data2vec_vitb16_in1k.yaml`` at width 384: shared
  relative position bias, layer scale, BEiT block masks, K = 6) against a data2vec 1.0 step written on
  ``transformers.Data2VecVisionModel``: the student with ``bool_masked_pos``, an EMA teacher (a second
  Data2VecVisionModel, ``output_hidden_states``), the same top-K targets (instance norm of each block output, mean,
  layer norm), a linear head, smooth-L1 at masked positions, and the EMA update (``torch._foreach_lerp_``).
* ``d2v1_ckpt``: ``d2v1`` with ``encoder.grad_checkpointing`` (the activation-memory / compute trade).
* ``d2v1_compile``, ``mae_compile``: ``d2v1`` and ``mae`` with ``train.compile`` (each block of student and teacher
  compiled, ``unimim.train.compile``); ``first_step_s`` in the JSON is the first step, compilation included.
* ``d2v2_r1``, ``d2v2_r8``, ``d2v2_r16``: unimim data2vec 2.0 (``recipes/image/data2vec2_vitb16_in1k.yaml`` at
  width 384) with 1, 8 and 16 (the recipe's) masks per image (no HF peer exists).

``--model vitb16`` gives every row the recipes' own ViT-B/16 (width 768, 12 heads; the HF peers sized alike): the
GPU table (``benchmarks/gpu_rows.sh``).

Each row runs in its own subprocess (so its peak memory is its own): ``--warmup`` untimed steps, then ``--steps``
timed ones; images/s counts unique images. FLOPs per image are counted, for ours and the peers alike, with
``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward (matrix products and convolutions only;
the CPU flash kernels added and a grouped convolution's backward counted per group, as in training:
``unimim.train.flops.counter``), so ``% of peak`` = counted FLOP/s / the bf16 (or fp32) ``torch.mm`` peak
measured in the same run. Peak memory: the row process's peak RSS (CPU) or ``max_memory_allocated`` (CUDA).

Timing caveat (as in ``step_throughput.py``): on a small CPU nothing else may run; the ``cpu util`` column shows
when something did. On a shared (virtual) host the speed also drifts between rows run minutes apart (the mm peak
815-925 GFLOP/s within an hour on one AMD EPYC VM): ``--rounds N`` runs every row N times, alternating, each round
with its own peak, and reports the medians (% of peak and ours / HF taken within each round) and the ratio's range.

Usage::

    python benchmarks/peer_table.py --threads 2 --rounds 3 --json benchmarks/results_peers_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_throughput import measure_mm_peak, sync  # noqa: E402

from unimim.core.batch import Batch  # noqa: E402
from unimim.train.flops import counter as flop_counter  # noqa: E402
from unimim.train.host_memory import retain_freed_memory  # noqa: E402

log = logging.getLogger("peer_table")
ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes" / "image"
VITS = ["encoder.dim=384", "encoder.num_heads=6", "encoder.depth=12"]
MODELS = {  # --model -> (width, heads, recipe overrides): ViT-S/16 (the CPU table) or the recipes' own ViT-B/16
    "vits16": (384, 6, VITS),
    "vitb16": (768, 12, ["encoder.dim=768", "encoder.num_heads=12", "encoder.depth=12"]),
}
ROWS = {  # row -> (label, peer of)
    "mae": ("MAE (75 %, decoder 8 x 512)", None),
    "mae_hf": ("ViTMAEForPreTraining", "mae"),
    "d2v1": ("data2vec 1.0 (K=6, rel. pos. bias, layer scale)", None),
    "d2v1_hf": ("Data2VecVisionModel student + teacher", "d2v1"),
    "d2v1_ckpt": ("data2vec 1.0, encoder.grad_checkpointing", None),
    "d2v1_compile": ("data2vec 1.0, train.compile", None),
    "mae_compile": ("MAE, train.compile", None),
    "d2v2_r1": ("data2vec 2.0, 1 mask per image", None),
    "d2v2_r8": ("data2vec 2.0, 8 masks per image", None),
    "d2v2_r16": ("data2vec 2.0, 16 masks per image", None),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# -- the steps ---------------------------------------------------------------------------------------------------
def ours(row: str, device: torch.device, precision: str, batch_size: int, model: str = "vits16"
         ) -> tuple[Any, Any, dict[str, Any]]:
    """(step(), flop_pass(), info) of a unimim objective built from its recipe (nothing by hand)."""
    from modalities.image.masking import build_mask_generator
    from unimim.app.experiment import load_recipe
    from unimim.app.registry import build_objective
    from unimim.core.masking import draw_masks
    from unimim.train.compile import compile_blocks
    from unimim.train.engine import SingleProcessEngine
    from unimim.train.optim import build_optimizer

    compile = row.endswith("_compile")  # the row of train.compile: the same step, its blocks compiled
    row = row.removesuffix("_compile")
    recipe, extra = {"mae": ("mae_vitb16_in1k.yaml", []), "d2v1": ("data2vec_vitb16_in1k.yaml", []),
                     "d2v1_ckpt": ("data2vec_vitb16_in1k.yaml", ["encoder.grad_checkpointing=true"]),
                     "d2v2_r1": ("data2vec2_vitb16_in1k.yaml", ["masking.num_masks=1"]),
                     "d2v2_r8": ("data2vec2_vitb16_in1k.yaml", ["masking.num_masks=8"]),
                     "d2v2_r16": ("data2vec2_vitb16_in1k.yaml", ["masking.num_masks=16"])}[row]
    cfg = load_recipe(RECIPES / recipe, [*MODELS[model][2], *extra, f"train.precision={precision}", "optim.lr=1e-4",
                                         "optim.base_lr=null", "optim.clip_grad=3.0"])
    torch.manual_seed(0)
    model = build_objective(cfg)
    engine = SingleProcessEngine(model, build_optimizer(model, cfg.optim), np.full(10_000, 1e-4), device=device,
                                 accumulate=1, clip_grad=cfg.optim.clip_grad, precision=precision)
    model.train()
    if compile:  # train.compile: the blocks of student and teacher, as a run compiles them
        compile_blocks(model, device)
    a = cfg.adapter
    gen = build_mask_generator(cfg.masking, a.grid, patch_size=a.patch_size, image_size=a.image_size)
    rng = np.random.default_rng(0)
    x = torch.randn(batch_size, a.in_chans, a.image_size, a.image_size, device=device)
    masks = [torch.from_numpy(np.stack([draw_masks(gen, rng, cfg.masking.num_masks) for _ in range(batch_size)]))
             .to(device) for _ in range(4)]  # (B, R, N) each
    state = {"i": 0}

    def forward_backward() -> torch.Tensor:
        batch = Batch(inputs=x, mask=masks[state["i"] % len(masks)])
        with engine.autocast():
            out = model(batch)
        engine.backward(out.loss)
        return out.loss

    def step() -> float:
        loss = forward_backward()
        engine.step(state["i"])
        model.update_teacher(state["i"] + 1)
        state["i"] += 1
        return float(loss.detach())

    def flop_pass() -> None:
        forward_backward()
        engine.optimizer.zero_grad(set_to_none=True)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return step, flop_pass, {"params_m": n_params / 1e6, "masks_per_image": cfg.masking.num_masks}


def hf_mae(device: torch.device, precision: str, batch_size: int, model: str = "vits16"
           ) -> tuple[Any, Any, dict[str, Any]]:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    d, h, _ = MODELS[model]
    config = ViTMAEConfig(hidden_size=d, num_hidden_layers=12, num_attention_heads=h, intermediate_size=4 * d,
                          image_size=224, patch_size=16, num_channels=3, qkv_bias=True, decoder_hidden_size=512,
                          decoder_num_hidden_layers=8, decoder_num_attention_heads=16, decoder_intermediate_size=2048,
                          mask_ratio=0.75, norm_pix_loss=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    net = ViTMAEForPreTraining(config).to(device).train()
    return _hf_loop(net, lambda x: net(pixel_values=x).loss, device, precision, batch_size, ema=None)


def hf_data2vec(device: torch.device, precision: str, batch_size: int, model: str = "vits16"
                ) -> tuple[Any, Any, dict[str, Any]]:
    """data2vec 1.0 on HF's Data2VecVision encoder, the settings of recipes/image/data2vec_vitb16_in1k.yaml."""
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    from modalities.image.masking import BlockMaskGenerator

    d, h, _ = MODELS[model]
    config = Data2VecVisionConfig(hidden_size=d, num_hidden_layers=12, num_attention_heads=h, intermediate_size=4 * d,
                                  image_size=224, patch_size=16, num_channels=3, use_mask_token=True,
                                  use_absolute_position_embeddings=False, use_relative_position_bias=False,
                                  use_shared_relative_position_bias=True, layer_scale_init_value=0.1,
                                  drop_path_rate=0.25, attention_probs_dropout_prob=0.05, hidden_dropout_prob=0.0,
                                  use_mean_pooling=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    student = Data2VecVisionModel(config, add_pooling_layer=False).to(device).train()
    teacher = Data2VecVisionModel(config, add_pooling_layer=False).to(device).eval()
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    head = torch.nn.Linear(d, d).to(device)
    module = torch.nn.ModuleDict({"student": student, "head": head})
    gen = BlockMaskGenerator((14, 14), 120, 16, None, 0.3)
    rng = np.random.default_rng(0)
    masks = [torch.from_numpy(np.stack([gen(rng) for _ in range(batch_size)])).to(device) for _ in range(4)]
    state = {"i": 0}
    k = 6

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        mask = masks[state["i"] % len(masks)]  # (B, N)
        h = student(pixel_values=x, bool_masked_pos=mask).last_hidden_state[:, 1:]  # (B, N, D)
        pred = head(h[mask])  # (M, D)
        with torch.no_grad():
            layers = teacher(pixel_values=x, output_hidden_states=True).hidden_states[-k:]  # K x (B, 1 + N, D)
            y = sum(F.layer_norm(t[:, 1:].float(), (d,)) for t in layers) / k  # (B, N, D)
            y = F.layer_norm(y, (d,))[mask]  # (M, D)
        return F.smooth_l1_loss(pred.float(), y, beta=2.0, reduction="none").sum(-1).mean() / d

    def ema() -> None:
        with torch.no_grad():
            t = list(teacher.parameters())
            s = [p.detach() for p in student.parameters()]
            torch._foreach_lerp_(t, s, 1 - 0.9998)

    return _hf_loop(module, loss_fn, device, precision, batch_size, ema=ema, counter=state)


def _hf_loop(module: torch.nn.Module, loss_fn: Any, device: torch.device, precision: str, batch_size: int, *,
             ema: Any, counter: dict[str, int] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05,
                            betas=(0.9, 0.999))
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    state = counter if counter is not None else {"i": 0}
    dtype = DTYPES[precision]

    def forward_backward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            loss = loss_fn(x)
        loss.backward()
        return loss

    def step() -> float:
        loss = forward_backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema()
        state["i"] += 1
        return float(loss.detach())

    def flop_pass() -> None:
        forward_backward()
        opt.zero_grad(set_to_none=True)

    n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return step, flop_pass, {"params_m": n_params / 1e6, "masks_per_image": 1}


def build_row(row: str, device: torch.device, precision: str, batch_size: int, model: str = "vits16"
              ) -> tuple[Any, Any, dict[str, Any]]:
    """(step(), flop_pass(), info) of any row: an HF peer's or ours."""
    peers = {"mae_hf": hf_mae, "d2v1_hf": hf_data2vec}
    if row in peers:
        return peers[row](device, precision, batch_size, model)
    return ours(row, device, precision, batch_size, model)


def peer_of(row: str) -> str | None:
    """The HF peer row of ``row`` (None when it has none)."""
    return next((p for p, (_, of) in ROWS.items() if of == row), None)


# -- one row (in its own process) ----------------------------------------------------------------------------------
def run_child(script: str, argv: list[str], threads: int | None, what: str) -> dict[str, Any]:
    """Run ``script argv`` (a benchmark's internal one-row mode) in a fresh interpreter, its own process (its own
    peak memory and allocator state), and return the JSON of the last ``ROW `` line it prints; exit naming ``what``
    with the tail of its stderr when it fails."""
    cmd = [sys.executable, script, *argv, *(["--threads", str(threads)] if threads else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [x for x in out.stdout.splitlines() if x.startswith("ROW ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][4:])


def run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory(args.malloc == "retain")  # as a run's prepare_process does (for the HF rows too)
    step, flop_pass, info = build_row(row, device, args.precision, args.batch_size, args.model)
    # counted eagerly (compiled code is not seen by the counter); the compiled rows compile in their first step
    with torch.compiler.set_stance("force_eager"), flop_counter() as fc:
        flop_pass()
    flops_per_image = fc.get_total_flops() / args.batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses, cpu, first = [], [], 0.0, 0.0
    for i in range(args.warmup + args.steps):
        sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        losses.append(step())
        sync(device)
        if i == 0:
            first = time.perf_counter() - t0  # with train.compile: the compilation
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"{row}: non-finite loss {losses}")
    median = float(np.median(times))
    peak_mb = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"row": row, "label": ROWS[row][0], "step_s_median": median, "images_per_s": args.batch_size / median,
            "gflop_per_image": flops_per_image / 1e9, "peak_memory_mb": peak_mb,
            "cpu_util": cpu / (sum(times) * torch.get_num_threads()) if device.type == "cpu" else None,
            "first_step_s": first, "loss_first": losses[0], "loss_last": losses[-1], **info}


def run_pair(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """``row`` (ours) and its HF peer built in one process and stepped alternately (the order swapped every step),
    so that both see the same host speed: the median step times and the ratio of the medians. The peak memory of
    this process is both models', so it is not reported here (the rows' own processes give it)."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory(args.malloc == "retain")
    peer = peer_of(row)
    steps = {name: build_row(name, device, args.precision, args.batch_size, args.model)[0] for name in (row, peer)}
    times: dict[str, list[float]] = {row: [], peer: []}
    for i in range(args.warmup + args.steps):
        for name in ((row, peer) if i % 2 == 0 else (peer, row)):
            sync(device)
            t0 = time.perf_counter()
            steps[name]()
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    ours_s, peer_s = float(np.median(times[row])), float(np.median(times[peer]))
    return {"row": row, "peer": peer, "step_s_median": ours_s, "peer_step_s_median": peer_s,
            "ratio": peer_s / ours_s, "step_s": times[row], "peer_step_s": times[peer]}


# -- the table -----------------------------------------------------------------------------------------------------
def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each row over the rounds: the median images/s, % of the peak (each round's rate over that round's mm peak)
    and ratio to its peer (within each round; and, where run, from the same process stepping both alternately),
    the spread of the ratios, the largest peak memory, the lowest cpu."""
    out: dict[str, dict[str, Any]] = {}
    for name in rounds[0]["rows"]:
        runs = [r["rows"][name] for r in rounds]
        pct = [100 * x["images_per_s"] * x["gflop_per_image"] / r["mm_peak_gflops"] for x, r in zip(runs, rounds)]
        peer = peer_of(name)
        ratios = ([r["rows"][name]["images_per_s"] / r["rows"][peer]["images_per_s"] for r in rounds]
                  if peer in rounds[0]["rows"] else [])
        utils = [x["cpu_util"] for x in runs if x.get("cpu_util") is not None]
        same = [r["pairs"][name]["ratio"] for r in rounds if name in r.get("pairs", {})]
        out[name] = {**runs[0], "images_per_s": float(np.median([x["images_per_s"] for x in runs])),
                     "images_per_s_rounds": [x["images_per_s"] for x in runs],
                     "pct_of_peak": float(np.median(pct)), "pct_of_peak_rounds": pct,
                     "vs_peer": float(np.median(ratios)) if ratios else None, "vs_peer_rounds": ratios,
                     "vs_peer_same_process": float(np.median(same)) if same else None,
                     "vs_peer_same_process_rounds": same,
                     "peak_memory_mb": max(x["peak_memory_mb"] for x in runs),
                     "cpu_util": min(utils) if utils else None,
                     "first_step_s": float(np.median([x["first_step_s"] for x in runs]))}
    return out


def table(rows: dict[str, dict[str, Any]], n_rounds: int) -> str:
    """ours / HF from the rows' own processes ("vs HF") and from one process stepping both alternately ("same
    proc"); with several rounds, the ranges of both over the rounds."""
    spread = n_rounds > 1
    same = any(r.get("vs_peer_same_process") is not None for r in rows.values())
    head = (f"{'row':48} {'img/s':>7} {'GFLOP/img':>9} {'% peak':>6} {'peak MB':>8} {'cpu':>5}  {'vs HF':>6}"
            + (f"  {'range':>9}" if spread else "") + (f"  {'same proc':>9}" if same else "")
            + (f"  {'range':>9}" if same and spread else ""))
    lines = [head, "-" * len(head)]

    def cell(value: float | None, values: list[float]) -> str:
        text = f"{value:6.2f}" if value is not None else "     -"
        if spread:
            text += f"  {min(values):4.2f}-{max(values):.2f}" if values else "          "
        return text

    for r in rows.values():
        util = f"{100 * r['cpu_util']:4.0f}%" if r.get("cpu_util") is not None else "    -"
        line = (f"{r['label'][:48]:48} {r['images_per_s']:7.2f} {r['gflop_per_image']:9.2f} {r['pct_of_peak']:6.1f} "
                f"{r['peak_memory_mb']:8.0f} {util}  {cell(r['vs_peer'], r['vs_peer_rounds'])}")
        if same:
            line += "     " + cell(r.get("vs_peer_same_process"), r.get("vs_peer_same_process_rounds", []))
        lines.append(line.rstrip())
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="bf16", choices=list(DTYPES))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", default="vits16", choices=list(MODELS), help="ViT-S/16 (default) or ViT-B/16")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    p.add_argument("--peak-sizes", default="1024,2048")
    p.add_argument("--rounds", type=int, default=1, help="run every row this many times, alternating; medians")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--malloc", default="retain", choices=["retain", "glibc"],
                   help="each row's process as training sets it (train.retain_freed_memory, for the HF rows too) "
                        "or with glibc's allocator defaults")
    p.add_argument("--no-pairs", dest="pairs", action="store_false",
                   help="skip the same-process runs of ours and its HF peer stepped alternately")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row, print its JSON
    p.add_argument("--pair", default=None, help=argparse.SUPPRESS)  # internal: ours and its peer, alternating
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.row is not None:
        print("ROW " + json.dumps(run_row(args.row, args)), flush=True)
        return
    if args.pair is not None:
        print("ROW " + json.dumps(run_pair(args.pair, args)), flush=True)
        return
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    for row in names:
        if row not in ROWS:
            p.error(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
    sizes = [int(x) for x in args.peak_sizes.split(",")]
    rounds: list[dict[str, Any]] = []
    pairs = [r for r in names if args.pairs and peer_of(r) in names]

    def sub(flag: str, row: str) -> dict[str, Any]:
        return run_child(__file__, [flag, row, "--model", args.model, "--device", args.device,
                                    "--precision", args.precision, "--batch-size", str(args.batch_size),
                                    "--steps", str(args.steps), "--warmup", str(args.warmup),
                                    "--malloc", args.malloc], args.threads, f"{flag} {row}")

    for k in range(args.rounds):  # on a shared host the speed drifts: each round has its own peak, rows alternate
        peak = measure_mm_peak(device, DTYPES[args.precision], sizes, 5)["gflops"]
        rows: dict[str, dict[str, Any]] = {}
        paired: dict[str, dict[str, Any]] = {}
        for row in names:
            rows[row] = sub("--row", row)
            log.info("round %d/%d, %s: %.2f img/s", k + 1, args.rounds, row, rows[row]["images_per_s"])
            if args.json is not None:  # after every row: a run cut short keeps the rows it finished
                args.json.write_text(json.dumps({"partial": True, "cpu": cpu_model(), "model": args.model,
                                                 "rounds": [*rounds, {"mm_peak_gflops": peak, "rows": rows}]},
                                                indent=2) + "\n")
        for row in pairs:
            paired[row] = sub("--pair", row)
            log.info("round %d/%d, %s and its peer in one process: ours / HF %.2f", k + 1, args.rounds, row,
                     paired[row]["ratio"])
        rounds.append({"mm_peak_gflops": peak, "rows": rows, "pairs": paired})
    summary = summarise(rounds)
    text = table(summary, args.rounds)
    peaks = [r["mm_peak_gflops"] for r in rounds]
    print(f"# {cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
          f"{torch.get_num_threads()} threads, {args.model}, {args.precision}, batch {args.batch_size}, "
          f"malloc {args.malloc}, "
          f"{args.precision} mm peak "
          + (f"{peaks[0]:.0f} GFLOP/s" if len(peaks) == 1 else
             f"{min(peaks):.0f}-{max(peaks):.0f} GFLOP/s over {len(peaks)} rounds (medians below)"))
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "partial": False, "device": args.device, "cpu": cpu_model(), "platform": platform.platform(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": args.precision,
            "batch_size": args.batch_size, "model": args.model, "malloc": args.malloc,
            "mm_peak_gflops": float(np.median(peaks)),
            "rows": summary, "rounds": rounds, "table": text}, indent=2) + "\n")


if __name__ == "__main__":
    main()
