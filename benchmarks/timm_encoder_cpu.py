"""CPU cost of the timm encoder backend against unimim's own encoder, same weights and shapes.

Times forward + backward of ``TimmEncoder`` (``encoder.backend: timm``, ``vit_tiny_patch16_224`` sized 6 x 192 x 3
heads) and ``TransformerEncoder`` (the same architecture, the timm encoder's weights loaded) under bf16 autocast, on
the visible tokens of ``recipes/image/data2vec2_fmnist_timm_cpu.yaml`` (128 x 4 masks per step, cls + 17 of 49
patches; here one micro-batch of 128), alternating the two so that both see the same machine load.

    python benchmarks/timm_encoder_cpu.py        # ~30 s on 2 cores; --threads N, --repeats N
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from unimim.nn.encoder import EncoderConfig, TransformerEncoder
from unimim.nn.timm_encoder import TimmEncoder
from unimim.nn.tokens import Tokens

logger = logging.getLogger("timm_encoder_cpu")


def step_seconds(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    """Seconds per forward + backward of ``model`` on tokens ``x`` (B, T, D) under bf16 autocast."""
    start = time.perf_counter()
    for _ in range(iters):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(Tokens(x))
        out.x.float().square().mean().backward()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=192, depth=6, num_heads=3, backend="timm", timm_model="vit_tiny_patch16_224",
                        timm_size="encoder")
    timm_enc = TimmEncoder(cfg).train()
    unimim_enc = TransformerEncoder(EncoderConfig(dim=192, depth=6, num_heads=3)).train()
    unimim_enc.load_state_dict(timm_enc.state_dict())
    x = torch.randn(128, 18, 192)  # (B, 1 + 17 visible patches, D)
    times: dict[str, list[float]] = {"timm": [], "unimim": []}
    for name, model in (("timm", timm_enc), ("unimim", unimim_enc)):
        step_seconds(model, x, 1)  # warm-up
    for _ in range(args.repeats):
        for name, model in (("timm", timm_enc), ("unimim", unimim_enc)):
            times[name].append(step_seconds(model, x, args.iters))
    best = {k: min(v) for k, v in times.items()}
    logger.info("forward + backward, bf16, %d thread(s), min of %d: timm %.1f ms, unimim %.1f ms (timm / unimim %.2f)",
                args.threads, args.repeats, 1e3 * best["timm"], 1e3 * best["unimim"], best["timm"] / best["unimim"])


if __name__ == "__main__":
    main()
