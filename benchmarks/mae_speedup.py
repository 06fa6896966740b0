"""MAE's speed-up from dropping masked patches: one training step of MAE vs the same model with the encoder run on
all patches, as a ratio measured in the same process.

Both variants are built from one recipe through ``load_recipe`` + ``build_objective`` (nothing by hand) and share the
weights, the optimizer (AdamW over every parameter), the masks (the recipe's random masks, 75 %), the decoder and the
loss (MSE on masked patches, norm_pix). They differ only in what the encoder sees:

* ``mae``: the visible patches + cls (``MAE.predict``: ``Tokens.select(ids_keep)``), T = 1 + N/4 tokens;
* ``all_patches``: every patch, masked ones replaced by the adapter's mask token (the SimMIM / BEiT way,
  ``adapter.embed(x, mask=mask)``), T = 1 + N; the decoder then reads all N encoder outputs (no decoder mask tokens).

One step = forward + backward + AdamW step (``SingleProcessEngine``: autocast in bf16 when asked, gradient clipping
off as in MAE), on one synthetic batch already on the device; data loading and mask drawing are not timed. The
reported ratio is median step time of ``all_patches`` / median step time of ``mae`` (> 1 = MAE is faster), with the
optimizer step and, separately, for forward + backward only (the AdamW step costs the same in both and dilutes the
ratio at small batches); the MAE
paper reports >= 3x for ViT-L with an 8-block decoder (He et al. 2022, §4 "Training schedule"/Figure 1 caption).

Models: ``vits16`` = recipes/image/mae_vitb16_in1k.yaml with ``encoder.dim=384 encoder.num_heads=6`` (ViT-S/16,
224 px, 196 patches, decoder 8 x 512); ``vitb16`` = the recipe as is (ViT-B/16); ``demo`` =
recipes/image/mae_fmnist_cpu.yaml (the CPU demo: D 192, depth 6, 49 patches, decoder 2 x 128).

Usage::

    python benchmarks/mae_speedup.py --device cpu --models demo,vits16 --batch-size 8 --steps 5 --warmup 2 \\
        --precision bf16 --json benchmarks/results_mae_speedup_cpu.json

Timing caveat: on a small shared CPU run it alone (e.g. under ``flock``): another process on the cores distorts both
variants, and the ratio with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modalities.image.masking import build_mask_generator  # noqa: E402
from unimim.app.experiment import load_recipe  # noqa: E402
from unimim.app.registry import build_objective  # noqa: E402
from unimim.core.batch import Batch  # noqa: E402
from unimim.core.masking import draw_masks  # noqa: E402
from unimim.objectives.base import ObjectiveOutput  # noqa: E402
from unimim.train.engine import SingleProcessEngine, resolve_device  # noqa: E402
from unimim.train.optim import OptimConfig, build_optimizer  # noqa: E402

log = logging.getLogger("mae_speedup")

MODELS = {
    "demo": ("mae_fmnist_cpu.yaml", []),
    "vits16": ("mae_vitb16_in1k.yaml", ["encoder.dim=384", "encoder.num_heads=6"]),
    "vitb16": ("mae_vitb16_in1k.yaml", []),
}


def all_patches_forward(model: Any, batch: Batch) -> ObjectiveOutput:
    """The baseline: the MAE model with its encoder run on every patch (mask tokens substituted at the input)."""
    x, mask = batch.inputs, batch.single_mask("MAE")  # (B, C, S, S), (B, N)
    tokens = model.adapter.embed(x, mask=mask)  # (B, 1 + N, D), masked patches = mask token
    h = model.encoder(tokens).x  # (B, 1 + N, D): every patch goes through the encoder
    b, n = mask.shape
    order = torch.arange(n, device=x.device).expand(b, n)  # identity restore: all N slots come from the encoder
    pred = model.decoder(h, order).float()  # (B, N, P)
    per_patch = (pred - model.targets(x)).pow(2).mean(-1)  # (B, N)
    w = mask.to(per_patch.dtype)
    return ObjectiveOutput(loss=(per_patch * w).sum() / w.sum())


def time_steps(engine: SingleProcessEngine, forward: Any, batch: dict[str, torch.Tensor], steps: int,
               warmup: int, optimizer: bool = True) -> list[float]:
    """Step times in seconds; ``optimizer=False`` times forward + backward only (gradients dropped after each)."""
    times = []
    for i in range(warmup + steps):
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with engine.autocast():
            loss = forward(batch).loss
        if optimizer:
            engine.backward(loss)
            engine.step(0)
        else:
            loss.backward()
            engine.model.zero_grad(set_to_none=True)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def bench(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    recipe, extra = MODELS[name]
    cfg = load_recipe(ROOT / "recipes/image" / recipe, extra + [f"train.precision={args.precision}"])
    torch.manual_seed(0)
    model = build_objective(cfg)
    bs = args.batch_size or cfg.train.batch_size
    gen = build_mask_generator(cfg.masking, cfg.adapter.grid, patch_size=cfg.adapter.patch_size,
                               image_size=cfg.adapter.image_size)
    rng = np.random.default_rng(0)
    s, c = cfg.adapter.image_size, cfg.adapter.in_chans
    batch = Batch(inputs=torch.randn(bs, c, s, s, device=device),
                  mask=torch.from_numpy(draw_masks(gen, rng, bs)).to(device))  # (B, N): one mask per image
    optim = OptimConfig(lr=1e-4, base_lr=None, warmup_steps=0, clip_grad=None, betas=(0.9, 0.95))
    engine = SingleProcessEngine(model, build_optimizer(model, optim), np.full(1, 1e-4), device=device,
                                 accumulate=1, clip_grad=None, precision=args.precision)
    model.train()
    row: dict[str, Any] = {"model": name, "batch_size": bs, "precision": args.precision,
                           "patches": int(batch.mask.shape[2]), "masked": int(batch.mask[0, 0].sum())}
    for variant, fwd in (("mae", model), ("all_patches", lambda b: all_patches_forward(model, b))):
        t = time_steps(engine, fwd, batch, args.steps, args.warmup)
        row[f"{variant}_s"] = statistics.median(t)
        row[f"{variant}_img_per_s"] = bs / statistics.median(t)
        row[f"{variant}_fwd_bwd_s"] = statistics.median(time_steps(engine, fwd, batch, args.steps, args.warmup,
                                                                   optimizer=False))
    row["speedup"] = row["all_patches_s"] / row["mae_s"]
    row["speedup_fwd_bwd"] = row["all_patches_fwd_bwd_s"] / row["mae_fwd_bwd_s"]
    log.info("%s: MAE %.3f s/step, all patches %.3f s/step -> speed-up %.2fx (forward + backward only: %.2fx)", name,
             row["mae_s"], row["all_patches_s"], row["speedup"], row["speedup_fwd_bwd"])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="demo,vits16")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's batch size")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = [bench(name.strip(), args, device) for name in args.models.split(",")]
    header = (f"{'model':8} {'batch':>5} {'prec':>5} {'MAE s/step':>11} {'all s/step':>11} {'speed-up':>8} "
              f"{'fwd+bwd speed-up':>16}")
    log.info(header)
    for r in rows:
        log.info(f"{r['model']:8} {r['batch_size']:5d} {r['precision']:>5} {r['mae_s']:11.4f} "
                 f"{r['all_patches_s']:11.4f} {r['speedup']:7.2f}x {r['speedup_fwd_bwd']:15.2f}x")
    if args.json:
        meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
