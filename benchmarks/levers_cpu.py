"""The training-step levers of the performance notes, each timed alone against its alternative, in one process.

Sections (ViT-S/16 at 224 px, batch 8, bf16 autocast, unless said):

* ``attention``: one ``Attention`` forward + backward with the shared relative-position bias, in training with the
  recipe's attention dropout 0.05 and without dropout: PyTorch's SDPA (with dropout on the CPU: its math kernel,
  which casts q, k, v to fp32; without: the fused flash kernel) against :func:`unimim.nn.attention.explicit_attention`
  (bf16 matmuls and softmax); and the image demo shape (256, 50, 192, 3 heads).
* ``attention_nograd``: the same without gradients (the EMA teacher's forward, evaluation), at four shapes.
* ``dropout``: drawing the attention-dropout mask on an (8, 6, 197, 197) probability map: ``F.dropout`` (torch's
  ``bernoulli_``) on fp32 probabilities, ``rand >= p`` in fp32, and ``F.dropout`` on the probabilities cast to bf16
  first (the same Bernoulli draw; the multiply in bf16).
  And the current draw, :func:`unimim.nn.attention.dropout_keep` (16 random bits per entry, 4 per 64-bit draw)
  on the bf16 probabilities.
* ``step``: the data2vec 1.0 and MAE ViT-S/16 steps of ``peer_table.py``, interleaved: before the last levers
  (the explicit path on head views of qkv with the attention dropout from an fp32 uniform; each residual branch's
  layer scale, drop path and add as three passes; both kept in this file), with the explicit path as it is
  (contiguous k, v; ``dropout_keep``), and the code (``Block.residual``'s single ``addcmul`` too).
* ``adamw``: one AdamW step over the parameters of the data2vec 1.0 ViT-S/16 model: torch's plain per-parameter
  loop, ``foreach=True``, ``fused=True``.
* ``teacher``: the teacher's forward under autocast (fp32 weights cast at every use) against a forward of a bf16
  copy of its weights refreshed once per step (the refresh timed too).

Every row is the median of ``--reps`` timed repetitions after 2 untimed ones; the alternatives of a section are
interleaved. Timing caveat: nothing else may run on the cores (``flock`` on a shared machine).

Usage::

    python benchmarks/levers_cpu.py --threads 2 [--sections attention,dropout,adamw,teacher] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_table import RECIPES, VITS, cpu_model  # noqa: E402

import unimim.nn.attention as attention  # noqa: E402
from unimim.nn.attention import Attention  # noqa: E402


def timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved (2 untimed rounds first)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(reps + 2):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def attention_rows(reps: int) -> dict[str, float]:
    out = {}
    for (b, t, d, h), bias_on in (((8, 197, 384, 6), True), ((256, 50, 192, 3), False)):
        torch.manual_seed(0)
        x = torch.randn(b, t, d, requires_grad=True)
        bias = torch.randn(1, h, t, t) * 0.02 if bias_on else None
        for drop in (0.05, 0.0):
            layer = Attention(d, h, qkv_bias="qv", attn_drop=drop).train()

            def run(path: str, layer=layer, x=x, bias=bias) -> None:
                saved = attention.CPU_MATH_MAX_TOKENS
                attention.CPU_MATH_MAX_TOKENS = 1 << 30 if path == "explicit" else -1
                explicit = attention.explicit_attention
                if path == "sdpa":  # force SDPA even with dropout
                    attention.explicit_attention = _sdpa
                try:
                    with torch.autocast("cpu", torch.bfloat16):
                        y = layer(x, attn_bias=bias)
                    y.float().square().mean().backward()
                finally:
                    attention.CPU_MATH_MAX_TOKENS, attention.explicit_attention = saved, explicit

            res = timed({"sdpa": lambda: run("sdpa"), "explicit": lambda: run("explicit")}, reps)
            for k, v in res.items():
                out[f"attention ({b}, {t}, {d}, {h}) drop {drop} {k} ms"] = 1e3 * v
    return out


def attention_nograd_rows(reps: int) -> dict[str, float]:
    """The teacher's case: a forward without gradients (eval, no dropout), fused SDPA against the explicit path."""
    out = {}
    for b, t, d, h in ((8, 197, 384, 6), (8, 50, 384, 6), (64, 128, 256, 4), (32, 256, 256, 4)):
        torch.manual_seed(0)
        layer = Attention(d, h, qkv_bias="qv").eval()
        x, bias = torch.randn(b, t, d), torch.randn(1, h, t, t) * 0.02

        def run(explicit: bool, layer=layer, x=x, bias=bias) -> None:
            saved, fn = attention.CPU_MATH_MAX_TOKENS, torch.is_grad_enabled
            attention.CPU_MATH_MAX_TOKENS = 1 << 30 if explicit else -1
            torch.is_grad_enabled = lambda: True  # the explicit path's condition, without recording a graph
            try:
                with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                    layer(x, attn_bias=bias)
            finally:
                attention.CPU_MATH_MAX_TOKENS, torch.is_grad_enabled = saved, fn

        res = timed({"sdpa": lambda: run(False), "explicit": lambda: run(True)}, reps)
        for k, v in res.items():
            out[f"attention no grad ({b}, {t}, {d}, {h}) {k} ms"] = 1e3 * v
    return out


def _sdpa(q, k, v, mask, dropout_p, *, masked_rows=False):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def dropout_rows(reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    probs = torch.rand(8, 6, 197, 197).softmax(-1)
    probs16 = probs.to(torch.bfloat16)
    p = 0.05

    def keep16() -> torch.Tensor:
        keep, scale = attention.dropout_keep(probs16.shape, p, probs16.device, probs16.dtype)
        return probs16 * keep  # the scale goes on the (B, H, T, hd) output, not on this map

    fns = {"F.dropout fp32": lambda: F.dropout(probs, p),
           "rand >= p fp32": lambda: probs * (torch.rand_like(probs) >= p) / (1 - p),
           "F.dropout on bf16": lambda: F.dropout(probs16, p),
           "rand.ge_(p).div_(1 - p) fp32": lambda: probs * torch.rand_like(probs).ge_(p).div_(1 - p),
           "16-bit keep (dropout_keep) on bf16": keep16}
    return {f"dropout (8, 6, 197, 197) {k} ms": 1e3 * v for k, v in timed(fns, reps).items()}


def _explicit_rand_dropout(q, k, v, mask, dropout_p, *, masked_rows=False):
    """The explicit attention before its last levers (the baseline of the ``step`` section): matmuls on the head
    views of qkv as given, an fp32 uniform per probability, the (B, H, T, T) map multiplied in fp32 and cast back."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits + mask
    probs = logits.softmax(dim=-1)
    if masked_rows:
        probs = probs.nan_to_num(0.0)
    if dropout_p > 0:
        probs = probs * torch.rand_like(probs, dtype=torch.float32).ge_(dropout_p).div_(1.0 - dropout_p)
    return probs.to(v.dtype) @ v


def _residual_op_by_op(self, x, branch, ls):
    """``Block.residual`` before its fusion: layer scale, drop path and the add as three element-wise passes."""
    return x + self.drop_path(ls(branch))


def step_rows(reps: int) -> dict[str, float]:
    """Training steps of the peer table, interleaved in one process, before and after the explicit path's last
    levers. data2vec 1.0 ViT-S/16 (attention dropout 0.05 in every block, layer scale, drop path 0.25): before
    (``_explicit_rand_dropout``: head views, an fp32 uniform per probability; the residual op by op), with the
    explicit path as it is (contiguous k, v; ``dropout_keep``), and the code (``Block.residual`` too). MAE (no
    attention dropout, no layer scale or drop path: only the contiguous k, v differ): before and the code."""
    from peer_table import ours

    from unimim.nn.block import Block

    explicit, residual = attention.explicit_attention, Block.residual

    def run(step, attn_fn, residual_fn) -> None:
        attention.explicit_attention, Block.residual = attn_fn, residual_fn
        try:
            step()
        finally:
            attention.explicit_attention, Block.residual = explicit, residual

    out = {}
    d2v1, _, _ = ours("d2v1", torch.device("cpu"), "bf16", 8)
    res = timed({"before": lambda: run(d2v1, _explicit_rand_dropout, _residual_op_by_op),
                 "explicit path as now": lambda: run(d2v1, explicit, _residual_op_by_op),
                 "the code (Block.residual too)": lambda: run(d2v1, explicit, residual)}, reps)
    out.update({f"d2v1 step, {k} ms": 1e3 * v for k, v in res.items()})
    mae, _, _ = ours("mae", torch.device("cpu"), "bf16", 8)
    res = timed({"before": lambda: run(mae, _explicit_rand_dropout, residual),
                 "the code": lambda: run(mae, explicit, residual)}, reps)
    out.update({f"mae step, {k} ms": 1e3 * v for k, v in res.items()})
    return out


def _d2v1_model():
    from unimim.app.experiment import load_recipe
    from unimim.app.registry import build_objective

    cfg = load_recipe(RECIPES / "data2vec_vitb16_in1k.yaml", [*VITS])
    torch.manual_seed(0)
    return build_objective(cfg), cfg


def adamw_rows(reps: int) -> dict[str, float]:
    model, _ = _d2v1_model()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opts = {name: torch.optim.AdamW([copy.deepcopy(p) for p in params], lr=1e-4, **kw)
            for name, kw in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))}
    for opt in opts.values():
        for q, p in zip(opt.param_groups[0]["params"], params):
            q.grad = p.grad.clone()
    res = timed({k: o.step for k, o in opts.items()}, reps)
    n = sum(p.numel() for p in params) / 1e6
    return {f"adamw step ({n:.1f} M params) {k} ms": 1e3 * v for k, v in res.items()}


def teacher_rows(reps: int) -> dict[str, float]:
    model, cfg = _d2v1_model()
    model.train()
    teacher = model.teacher.module  # fp32, eval
    half = copy.deepcopy(teacher).to(torch.bfloat16)
    x = torch.randn(8, 3, 224, 224)
    t_params, h_params = list(teacher.parameters()), list(half.parameters())

    @torch.no_grad()
    def autocast_fp32() -> None:
        with torch.autocast("cpu", torch.bfloat16):
            teacher["encoder"](teacher["adapter"].embed(x))

    @torch.no_grad()
    def bf16_copy() -> None:
        torch._foreach_copy_(h_params, t_params)  # the refresh after each EMA update
        with torch.autocast("cpu", torch.bfloat16):
            half["encoder"](half["adapter"].embed(x.to(torch.bfloat16)))

    @torch.no_grad()
    def refresh() -> None:
        torch._foreach_copy_(h_params, t_params)

    res = timed({"autocast (fp32 weights)": autocast_fp32, "bf16 copy (incl. refresh)": bf16_copy,
                 "refresh alone": refresh}, reps)
    return {f"teacher forward {k} ms": 1e3 * v for k, v in res.items()}


SECTIONS = {"attention": attention_rows, "attention_nograd": attention_nograd_rows, "dropout": dropout_rows,
            "adamw": adamw_rows, "teacher": teacher_rows, "step": step_rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: dict[str, float] = {}
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.reps}")
    for name in args.sections.split(","):
        for k, v in SECTIONS[name](args.reps).items():
            rows[k] = v
            print(f"{k:70} {v:9.2f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": torch.get_num_threads(),
                                         "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
