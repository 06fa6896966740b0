"""Reference points for the WordNet-category probe of the text modality: how much can a 256-d mean-pooled feature
give on this probe, and what does a standard objective reach at the CPU recipe's budget?

* ``bags``: no encoder at all -- the mean of per-token vectors over each gloss, probed exactly as `unimim probe`
  does (linear probe with the recipe's settings, kNN; raw and PCA-whitened). Token vectors: a random N(0, 0.02)
  table (what a random encoder starts from), the token-embedding table of trained runs (``--runs``), and a
  PPMI-SVD embedding of the pretraining corpus itself (positive pointwise mutual information of tokens within
  5 positions, 1/distance weighted, context distribution smoothed with 0.75; rank-256 SVD; Levy & Goldberg 2014,
  Levy et al. 2015) -- what the corpus's co-occurrence statistics alone carry, with no neural training.
  Also the full 8K-dimensional bag of tokens.
* ``mlm``: the CPU recipe's encoder (``recipes/text/data2vec_text_cpu.yaml`` architecture: 4 × 256 post-LN,
  8K BPE, blocks of 128) trained with BERT's masked-LM cross-entropy (15 %, 80/10/10; Devlin et al. 2019; tied
  output embedding, dense-GELU-LN transform) instead of data2vec, same data pipeline, then probed with
  `unimim probe` against its random twin: the peer objective at the same budget.

Needs `make data-text`. ``bags`` takes ~3 min on 2 cores, ``mlm`` ~8 min (1,500 steps × 32 blocks).

    python benchmarks/text_probe_references.py bags --runs runs/d2v2_text_cpu
    python benchmarks/text_probe_references.py mlm --out runs/mlm_reference
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from modalities.text.data.dataset import TokenArray
from modalities.text.data.source import build_eval_sets, build_pretrain_source
from modalities.text.data.tokenizer import load_tokenizer
from unimim.app.experiment import config_from_dict
from unimim.app.registry import build_objective
from unimim.eval.probe import knn_accuracy, linear_probe, whiten_features
from unimim.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from unimim.train.run import write_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/text/data2vec_text_cpu.yaml"


def bag_of_tokens(items: list[torch.Tensor], vocab: int) -> torch.Tensor:
    """(N, V) mean one-hot of each gloss's tokens, ``<s>`` / ``</s>`` excluded."""
    out = torch.zeros(len(items), vocab)
    for i, ids in enumerate(items):
        body = ids[1:-1]
        out[i].index_add_(0, body, torch.full((len(body),), 1.0 / max(len(body), 1)))
    return out


def ppmi_svd(tokens: np.ndarray, vocab: int, dim: int, window: int = 5) -> torch.Tensor:
    """(V, dim) rows U sqrt(S) of the rank-``dim`` SVD of the corpus's PPMI matrix (see the module docstring)."""
    counts = np.zeros(vocab * vocab, dtype=np.float64)
    ids = tokens.astype(np.int64)
    for w in range(1, window + 1):
        a, b = ids[:-w], ids[w:]
        counts += np.bincount(a * vocab + b, minlength=vocab * vocab) / w
        counts += np.bincount(b * vocab + a, minlength=vocab * vocab) / w
    c = counts.reshape(vocab, vocab)
    total = c.sum()
    rows = c.sum(axis=1)
    ctx = c.sum(axis=0) ** 0.75
    ctx = ctx / ctx.sum() * total
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * total / np.outer(rows, ctx))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    u, s, _ = torch.svd_lowrank(torch.from_numpy(ppmi).float(), q=dim, niter=4)
    return u * s.sqrt()


def bags(runs: list[str]) -> None:
    cfg = config_from_dict(yaml.safe_load(RECIPE.read_text()), [])
    data, adapter = cfg.data, cfg.adapter
    train, test = build_eval_sets(data, adapter)
    vocab, dim = adapter.vocab_size, cfg.encoder.dim
    btr, bte = bag_of_tokens(train.items, vocab), bag_of_tokens(test.items, vocab)
    ytr, yte = torch.tensor(train.labels), torch.tensor(test.labels)
    pcfg = cfg.probe

    def report(name: str, xtr: torch.Tensor, xte: torch.Tensor, whiten: bool = True) -> None:
        lin = linear_probe(xtr, ytr, xte, yte, pcfg)["test_acc"]
        knn = knn_accuracy(xtr, ytr, xte, yte, k=pcfg.knn_k, temperature=pcfg.knn_temperature)
        line = f"{name:<44} linear {lin:.3f}  kNN {knn:.3f}"
        if whiten:
            wtr, wte = whiten_features(xtr, xte, pcfg.whiten_eps)
            line += (f"  | whitened: linear {linear_probe(wtr, ytr, wte, yte, pcfg)['test_acc']:.3f}  kNN "
                     f"{knn_accuracy(wtr, ytr, wte, yte, k=pcfg.knn_k, temperature=pcfg.knn_temperature):.3f}")
        print(line, flush=True)

    print(f"WordNet probe: {len(train)} train / {len(test)} test glosses, majority class "
          f"{torch.bincount(yte).max().item() / len(yte):.3f}")
    report(f"bag of {vocab} tokens (no projection)", btr, bte, whiten=False)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(vocab, dim, generator=g) * 0.02
    report(f"mean of random N(0, 0.02) vectors, d={dim}", btr @ table, bte @ table)
    for run in runs:
        state = load_checkpoint(Path(run) / CHECKPOINT_NAME)["model"]
        table = state["backbone.adapter.tokens.weight"].float()
        report(f"mean of {run}'s token embeddings", btr @ table, bte @ table)
    tokenizer = load_tokenizer(data.tokenizer)
    array = TokenArray.build(data, tokenizer, Path(data.tokenizer))
    table = ppmi_svd(np.asarray(array.tokens), vocab, dim)
    report(f"mean of PPMI-SVD vectors of the corpus, d={dim}", btr @ table, bte @ table)


def mlm(out: Path, steps: int, batch_size: int, lr: float, warmup: int) -> None:
    """Train the recipe's encoder with masked-LM cross-entropy; write a run directory `unimim probe` reads."""
    overrides = ["masking.prob=0.15", "masking.span_length=1", "masking.random_token_prob=0.1",
                 "masking.leave_unmasked_prob=0.1", f"name={out.name}", f"train.out_dir={out.parent}"]
    cfg = config_from_dict(yaml.safe_load(RECIPE.read_text()), overrides)
    torch.manual_seed(cfg.train.seed)
    objective = build_objective(cfg)  # the data2vec module only holds the backbone the probe reads
    adapter, encoder = objective.adapter, objective.encoder
    dim = cfg.encoder.dim
    transform = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.LayerNorm(dim))
    out_bias = torch.nn.Parameter(torch.zeros(cfg.adapter.vocab_size))
    params = [*adapter.parameters(), *encoder.parameters(), *transform.parameters(), out_bias]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    source = build_pretrain_source(cfg.data, cfg.masking, cfg.adapter)
    rng = np.random.default_rng(cfg.train.seed)
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                          (steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        batch = source.collate([source.example(int(i), rng) for i in rng.integers(0, len(source), batch_size)])
        mask = batch.mask[:, 0]  # (B, T) bool: the selected tokens (80/10/10 already applied to student_inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = encoder(adapter.embed(batch.student_inputs[:, 0])).x[mask]  # (n, D)
            logits = transform(hidden) @ adapter.tokens.weight.T + out_bias  # (n, V), tied output embedding
        loss = F.cross_entropy(logits.float(), batch.inputs[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: masked-LM loss {loss.item():.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out)  # the architecture and data the probe rebuilds (the data2vec `method` is unused)
    shutil.copyfile(cfg.data.tokenizer, out / f"tokenizer{Path(cfg.data.tokenizer).suffix}")

    class _NoEngine:
        def state_dict(self) -> dict:
            return {}

    save_checkpoint(out / CHECKPOINT_NAME, model=objective, engine=_NoEngine(), step=steps, config={})
    print(f"wrote {out}; now: unimim probe {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("bags")
    p.add_argument("--runs", nargs="*", default=[], help="text run directories whose token tables to probe")
    p = sub.add_parser("mlm")
    p.add_argument("--out", type=Path, default=Path("runs/mlm_reference"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    if args.cmd == "bags":
        bags(args.runs)
    else:
        mlm(args.out, args.steps, args.batch_size, args.lr, args.warmup)


if __name__ == "__main__":
    main()
