"""Fine-tuning throughput: unimim's fine-tune step (FinetuneModel on a data2vec backbone, layer-wise lr decay AdamW,
the single-process engine: autocast, clipping off, the scheduled lr) against a plain timm ``VisionTransformer``
training step of the same size (global_pool avg, fc_norm, the same AdamW settings in two groups), in the same
process, alternating rounds so that both see the same machine load.

    python benchmarks/finetune_throughput.py --threads 2                     # ViT-S/16 at 224 px, batch 8
    python benchmarks/finetune_throughput.py --dim 192 --depth 6 --heads 3 --image 28 --patch 4 --channels 1 \\
        --batch 128 --threads 2                                              # the Fashion-MNIST demo's model
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from unimim.app.experiment import load_recipe
from unimim.app.registry import build_objective
from unimim.core.batch import Batch
from unimim.eval.finetune import FinetuneConfig, FinetuneModel, build_layer_decay_optimizer
from unimim.train.engine import SingleProcessEngine
from unimim.train.optim import build_optimizer

log = logging.getLogger("finetune_throughput")


def unimim_step(args) -> tuple[callable, int]:
    recipe = "recipes/image/data2vec_fmnist_cpu.yaml"
    cfg = load_recipe(recipe, [f"encoder.dim={args.dim}", f"encoder.depth={args.depth}",
                               f"encoder.num_heads={args.heads}", "encoder.drop_path=0.1",
                               f"adapter.image_size={args.image}", f"adapter.patch_size={args.patch}",
                               f"adapter.in_chans={args.channels}", "adapter.positions=learned",
                               f"method.top_k={min(args.depth, 6)}"])
    obj = build_objective(cfg)
    ft = FinetuneConfig(drop_path=0.1, batch_size=args.batch)
    model = FinetuneModel(obj.encoding_backbone(), obj.encode, kind="classification", num_classes=args.classes,
                          dim=args.dim, num_prefix_tokens=1, num_layers=args.depth, cfg=ft)
    opt = build_layer_decay_optimizer(model, ft.optim, depth=args.depth, layer_decay=0.65)
    engine = SingleProcessEngine(model, opt, np.full(10_000, 1e-4), device=torch.device("cpu"),
                                 precision=args.precision)
    x = torch.randn(args.batch, args.channels, args.image, args.image)
    y = torch.randint(0, args.classes, (args.batch,))
    batch = Batch(inputs=x, labels=y)
    model.train()

    def step(i: int) -> None:
        with engine.autocast():
            out = engine.model(batch)
        engine.backward(out.loss)
        engine.step(i)

    return step, sum(p.numel() for p in model.parameters())


def timm_step(args) -> tuple[callable, int]:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=args.image, patch_size=args.patch, in_chans=args.channels,
                              num_classes=args.classes, embed_dim=args.dim, depth=args.depth, num_heads=args.heads,
                              global_pool="avg", drop_path_rate=0.1).train()
    opt = build_optimizer(model, FinetuneConfig().optim)  # the same AdamW, decayed / not decayed groups
    x = torch.randn(args.batch, args.channels, args.image, args.image)
    y = torch.randint(0, args.classes, (args.batch,))
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step(i: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 1e-4
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = {"unimim": unimim_step(args), "timm": timm_step(args)}
    times: dict[str, list[float]] = {k: [] for k in rows}
    for name, (step, _) in rows.items():
        step(0)  # warm-up
    for _ in range(args.rounds):
        for name, (step, _) in rows.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(i)
            times[name].append(time.perf_counter() - t0)
    result = {"args": vars(args)}
    for name, (_, n_params) in rows.items():
        best = min(times[name])
        result[name] = {"samples_per_s": args.batch * args.steps / best, "params": n_params,
                        "round_seconds": times[name]}
        log.info("%-7s %8.1f samples/s  (%.2fM parameters, best of %d rounds)", name,
                 result[name]["samples_per_s"], n_params / 1e6, args.rounds)
    result["ratio"] = result["unimim"]["samples_per_s"] / result["timm"]["samples_per_s"]
    log.info("unimim / timm: %.2f", result["ratio"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
