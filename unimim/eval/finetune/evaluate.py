"""Test-split evaluation of a fine-tuned model, with the per-example predictions kept (so that any two runs can
be compared later on the same examples): top-1 / top-5 accuracy (classification), or the greedy-decoding error
rate (ctc: WER or CER, whatever the output symbols are), and paired comparisons of two inits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from unimim.core.batch import LABEL_PAD, Batch
from unimim.eval.compare import paired_bootstrap
from unimim.eval.finetune.model import FinetuneModel

try:  # the speech tasks' module; until it is merged, a stand-in with the same interface
    from unimim.eval.ctc import error_rate, greedy_decode
except ImportError:  # pragma: no cover - depends on what is merged
    from unimim.eval.finetune.ctc_standin import error_rate, greedy_decode


@torch.no_grad()
def evaluate(model: FinetuneModel, batches: Iterable[Batch], *, device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``model`` (eval mode) over the test batches.

    Returns, for classification: ``top1``, ``top5`` (top-min(5, C)), ``num_examples``, and per example
    ``labels``, ``predictions`` (argmax class) and ``correct`` (bool list); for ctc: ``error_rate`` (errors /
    reference symbols), ``errors``, ``total``, and per example ``labels`` (target ids), ``predictions`` (decoded
    ids), ``example_errors`` and ``example_lengths``.
    """
    model.eval()
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    labels: list[Any] = []
    preds: list[Any] = []
    top5: list[bool] = []
    for batch in tqdm(batches, desc="evaluate", disable=not progress, leave=False):
        batch = batch.to(device)
        if batch.labels is None:
            raise ValueError("evaluation needs labelled batches (Batch.labels)")
        with ctx:
            logits, lengths = model.logits(batch)
        logits = logits.float()
        if model.kind == "classification":
            k = min(5, logits.shape[-1])
            best = logits.topk(k, dim=-1).indices  # (B, k)
            y = batch.labels.reshape(-1)
            preds += best[:, 0].tolist()
            labels += y.tolist()
            top5 += (best == y[:, None]).any(dim=1).tolist()
        else:
            preds += greedy_decode(logits, lengths)
            labels += [[int(t) for t in row if t != LABEL_PAD] for row in batch.labels.tolist()]
    if not labels:
        raise ValueError("the test split yielded no batches")
    if model.kind == "classification":
        correct = [p == y for p, y in zip(preds, labels)]
        return {"top1": sum(correct) / len(correct), "top5": sum(top5) / len(top5), "num_examples": len(labels),
                "labels": labels, "predictions": preds, "correct": correct}
    per = [error_rate([r], [h]) for r, h in zip(labels, preds)]
    errors, total = error_rate(labels, preds)
    return {"error_rate": errors / max(total, 1), "errors": errors, "total": total, "num_examples": len(labels),
            "labels": labels, "predictions": preds, "example_errors": [e for e, _ in per],
            "example_lengths": [n for _, n in per]}


def compare_inits(a: dict[str, Any], b: dict[str, Any], *, seed: int = 0, samples: int = 10_000,
                  level: float = 0.95) -> dict[str, Any]:
    """A minus B on the same test examples with a paired bootstrap interval: top-1 accuracy (classification), or
    the error rate (ctc: the ratio of summed errors to summed reference lengths, resampled by example)."""
    if "correct" in a:
        out = paired_bootstrap(torch.tensor(a["correct"]), torch.tensor(b["correct"]), seed=seed, samples=samples,
                               level=level)
        return {"metric": "top1", **out}
    return {"metric": "error_rate", **paired_rate_bootstrap(
        torch.tensor(a["example_errors"]), torch.tensor(b["example_errors"]), torch.tensor(a["example_lengths"]),
        seed=seed, samples=samples, level=level)}


@torch.no_grad()
def paired_rate_bootstrap(errors_a: Tensor, errors_b: Tensor, lengths: Tensor, *, seed: int = 0,
                          samples: int = 10_000, level: float = 0.95, chunk: int = 500) -> dict[str, float]:
    """sum(errors_a) / sum(lengths) - sum(errors_b) / sum(lengths) over M examples, with a percentile interval of
    the same difference on resampled examples (each example's two error counts and its length kept together)."""
    m = errors_a.shape[0]
    if m == 0 or errors_b.shape[0] != m or lengths.shape[0] != m:
        raise ValueError("need the same non-empty set of examples for both inits")
    d, n = (errors_a - errors_b).double(), lengths.double()
    gen = torch.Generator().manual_seed(seed)
    stats = []
    for s in range(0, samples, chunk):
        idx = torch.randint(0, m, (min(chunk, samples - s), m), generator=gen)  # (c, M)
        stats.append(d[idx].sum(dim=1) / n[idx].sum(dim=1).clamp(min=1))  # (c,)
    boot = torch.cat(stats)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(boot, torch.tensor([tail, 1.0 - tail], dtype=boot.dtype)).tolist()
    return {"diff": float(d.sum() / n.sum().clamp(min=1)), "low": low, "high": high, "level": level,
            "num_examples": float(m)}
