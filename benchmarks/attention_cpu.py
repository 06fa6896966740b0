"""CPU self-attention: PyTorch's fused (flash) SDPA kernel vs unimim's explicit path (``explicit_attention``: bf16
matmuls, fp32 softmax; "math" in the table), forward + backward, and the effect on one text data2vec 2.0 training
step.

``unimim.nn.attention`` runs the explicit path on the CPU for sequences of up to ``CPU_MATH_MAX_TOKENS`` tokens
while gradients are recorded (and whenever attention dropout is active) and the fused kernel otherwise; this
benchmark is the evidence for that threshold. Part 1 times ``Attention`` (fused qkv, out projection) forward +
backward under bf16 autocast for the shapes of the CPU recipes and longer sequences; part 2 times full training
steps of ``recipes/text/data2vec2_text_cpu.yaml`` (student, teacher, decoder, backward, AdamW, EMA) on real blocks
with each kernel. Ratios are math / flash time in the same process (< 1: the explicit path is faster).

    python benchmarks/attention_cpu.py            # ~2 min on 2 cores; --no-step skips part 2 (needs make data-text)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import unimim.nn.attention as attention
from unimim.nn.attention import Attention

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"flash": 0, "math": 1 << 30}  # CPU_MATH_MAX_TOKENS that forces each kernel


def time_attention(math_max: int, B: int, T: int, D: int, H: int, iters: int) -> float:
    """Seconds per forward + backward of Attention on (B, T, D) under bf16 autocast."""
    attention.CPU_MATH_MAX_TOKENS = math_max
    torch.manual_seed(0)
    attn = Attention(D, H)
    x = torch.randn(B, T, D, requires_grad=True)
    for i in range(iters + 2):
        if i == 2:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = attn(x)
        y.float().sum().backward()
    return (time.perf_counter() - t0) / iters


def time_text_step(math_max: int, steps: int) -> float:
    """Seconds per training step of the CPU text recipe (data from `make data-text`)."""
    from modalities.text.data.source import build_pretrain_source
    from unimim.app.experiment import config_from_dict
    from unimim.app.registry import build_objective

    attention.CPU_MATH_MAX_TOKENS = math_max
    recipe = ROOT / "recipes/text/data2vec2_text_cpu.yaml"
    cfg = config_from_dict(yaml.safe_load(recipe.read_text()), [])
    torch.manual_seed(0)
    objective = build_objective(cfg)
    source = build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
    rng = np.random.default_rng(0)
    batches = [source.collate([source.example(int(i), rng) for i in rng.integers(0, len(source), cfg.train.batch_size)])
               for _ in range(steps + 2)]
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    for i, batch in enumerate(batches):
        if i == 2:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = objective(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.update_teacher(i + 1)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--no-step", action="store_true", help="skip the text training-step comparison")
    args = parser.parse_args()
    default = attention.CPU_MATH_MAX_TOKENS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast, forward + backward")
    print(f"{'shape (B, T, D, H)':<24}{'flash ms':>10}{'math ms':>10}{'math/flash':>12}")
    for B, T, D, H in ((256, 50, 192, 3), (64, 128, 256, 4), (32, 256, 256, 4), (16, 512, 256, 4),
                       (8, 512, 768, 12)):
        t = {name: time_attention(b, B, T, D, H, args.iters) for name, b in BACKENDS.items()}
        print(f"{str((B, T, D, H)):<24}{t['flash'] * 1e3:>10.1f}{t['math'] * 1e3:>10.1f}"
              f"{t['math'] / t['flash']:>12.2f}")
    if not args.no_step:
        t = {name: time_text_step(b, args.steps) for name, b in BACKENDS.items()}
        print(f"text data2vec 2.0 CPU step: flash {t['flash']:.3f} s, math {t['math']:.3f} s, "
              f"math/flash {t['math'] / t['flash']:.2f}")
    attention.CPU_MATH_MAX_TOKENS = default


if __name__ == "__main__":
    main()
