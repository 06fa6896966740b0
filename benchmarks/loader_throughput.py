"""Does the data loader keep up? Images/s of the image pretraining loader alone, per worker count, against the
images/s of the training step it feeds, in one process.

The loader is the recipe's own (``spec.build_pretrain_source`` + ``unimim.train.data.make_loader``): decode of
Fashion-MNIST (``/usr/share/datasets/fashion-mnist/``), random resized crop and flip, and the masks, made in the
workers (data2vec 2.0: R masks per image, ``masking.num_masks``). It is timed over ``--batches`` batches after the
workers' first batch (their start-up is not counted). The step: one optimizer step of the recipe's objective
(forward, backward, clipping, AdamW, EMA) through ``SingleProcessEngine`` on batches the loader made beforehand
(loading not counted), ``--steps`` timed after 2.

With W workers on a machine of C cores the loader's workers and the step's threads share the cores: the loader rows
measure the loader alone, so they are an upper bound of what it gives while training.

Usage::

    python benchmarks/loader_throughput.py --threads 2 --workers 0,1,2 \\
        [--recipe recipes/image/data2vec2_fmnist_cpu.yaml] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_table import cpu_model  # noqa: E402

from unimim.app.experiment import load_recipe  # noqa: E402
from unimim.app.registry import MODALITIES, build_objective  # noqa: E402
from unimim.train.data import make_loader  # noqa: E402
from unimim.train.engine import SingleProcessEngine  # noqa: E402
from unimim.train.optim import build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def loader_rate(source, batch_size: int, workers: int, batches: int, seed: int) -> float:
    loader = make_loader(source, batch_size=batch_size, seed=seed, num_workers=workers, collate_fn=source.collate)
    it = iter(loader)
    next(it)  # the workers' start-up and first batch are not timed
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - t0)
    del it, loader
    return rate


def step_rate(cfg, source, steps: int) -> float:
    torch.manual_seed(cfg.train.seed)
    objective = build_objective(cfg)
    engine = SingleProcessEngine(objective, build_optimizer(objective, cfg.optim), np.full(1000, 1e-4),
                                 device=torch.device("cpu"), clip_grad=cfg.optim.clip_grad,
                                 precision=cfg.train.precision)
    objective.train()
    it = iter(make_loader(source, batch_size=cfg.train.batch_size, seed=cfg.train.seed, collate_fn=source.collate))
    batches = [next(it) for _ in range(4)]
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with engine.autocast():
            out = engine.model(batches[i % len(batches)])
        engine.backward(out.loss)
        engine.step(i)
        objective.update_teacher(i + 1)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return cfg.train.batch_size / float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes/image/data2vec2_fmnist_cpu.yaml")
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_recipe(args.recipe)
    source = MODALITIES[cfg.modality].build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
    b = cfg.train.batch_size
    rows = {f"loader, {w} workers": loader_rate(source, b, int(w), args.batches, cfg.train.seed)
            for w in args.workers.split(",")}
    rows["training step"] = step_rate(cfg, source, args.steps)
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, {args.recipe.name}: batch {b}, "
          f"{cfg.masking.num_masks} masks per image")
    for k, v in rows.items():
        print(f"{k:24} {v:9.1f} images/s")
    if args.json is not None:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": torch.get_num_threads(),
                                         "recipe": str(args.recipe.relative_to(ROOT)), "batch_size": b,
                                         "num_masks": cfg.masking.num_masks, "images_per_s": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
