"""data2vec 2.0 multi-mask: the local encoder once per example (its output repeated R times) vs the raw input
repeated R times before it, as a ratio measured in the same process.

The reference clones after the local encoder (fairseq examples/data2vec/models/modalities/base.py
``contextualized_features``: ``x.repeat_interleave(clone_batch)`` after ``local_features``); so does
``Data2VecBase.student_features``. For speech the local encoder is the 7-layer conv waveform encoder, most of a small
model's compute, which the other order runs R times per example.

Both variants are the same objective built from one recipe through ``load_recipe`` + ``build_objective``, with the
same weights, batch and masks; ``repeat_inputs`` only overrides ``student_features`` to repeat the waveforms first
(the former path). One step = forward + backward of the objective (the teacher forward included, the optimizer not),
on one synthetic batch; the reported ratio is the median step time of ``repeat_inputs`` / that of ``clone_after_local``
(> 1 = the new path is faster), timed alternately so that both see the same machine load.

Usage::

    python benchmarks/clone_after_local.py --recipe speech/data2vec2_tuxpaint_cpu.yaml --batch-size 8 \\
        --seconds 1.5 --steps 6 --warmup 2 --json /tmp/clone_after_local.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modalities.speech.masking import SpeechMaskGenerator  # noqa: E402
from unimim.app.experiment import load_recipe  # noqa: E402
from unimim.app.registry import build_objective  # noqa: E402
from unimim.core.batch import Batch  # noqa: E402
from unimim.core.masking import draw_masks  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def repeat_inputs_first(model):
    """The former path: raw inputs repeated R times, then the local encoder on every copy."""

    def student_features(inputs, padding_mask, r):
        pad = None if padding_mask is None else padding_mask.repeat_interleave(r, 0)
        return model.adapter.local(inputs.repeat_interleave(r, 0), pad)

    return student_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="speech/data2vec2_tuxpaint_cpu.yaml")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.5, help="speech: waveform length per example")
    ap.add_argument("--num-masks", type=int, default=None, help="R (default: the recipe's masking.num_masks)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--override", action="append", default=[], help="extra recipe override KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    overrides = list(args.override) + (["masking.num_masks=%d" % args.num_masks] if args.num_masks else [])
    cfg = load_recipe(ROOT / "recipes" / args.recipe, overrides)
    if cfg.modality != "speech":
        raise SystemExit("this benchmark times the speech recipes (the conv waveform encoder is the local encoder)")
    torch.manual_seed(0)
    model = build_objective(cfg).train()
    r = cfg.masking.num_masks
    b, samples = args.batch_size, int(args.seconds * 16000)
    wave = torch.randn(b, samples)
    n = model.adapter.local(wave[:1]).x.shape[1]
    gen = SpeechMaskGenerator(cfg.masking)
    mask = torch.from_numpy(np.stack([draw_masks(gen, np.random.default_rng([0, i]), r, n) for i in range(b)]))
    batch = Batch(inputs=wave, mask=mask)  # (B, S), (B, R, N)

    variants = {"clone_after_local": model.student_features, "repeat_inputs": repeat_inputs_first(model)}
    losses, times = {}, {k: [] for k in variants}

    def step(name):
        model.student_features = variants[name]
        torch.manual_seed(1)
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            out = model(batch)
        out.loss.backward()
        dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        losses[name] = float(out.loss.detach())
        return dt

    for i in range(args.warmup + args.steps):
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for name in order:
            dt = step(name)
            if i >= args.warmup:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "recipe": args.recipe, "batch_size": b, "num_masks": r, "samples": samples, "frames": n,
        "precision": cfg.train.precision, "threads": args.threads, "steps": args.steps, "cpu": cpu_model(),
        "note": "shared 2-core machine (other jobs may run); only the ratio, measured in one run, is the claim",
        "median_s": med, "losses": losses,
        "ratio_repeat_inputs_over_clone_after_local": med["repeat_inputs"] / med["clone_after_local"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
