"""Test-split evaluation of a fine-tuned model, with the per-example predictions kept (so that any two runs can
be compared later on the same examples): top-1 / top-5 accuracy (classification), or the word and character error
rates of greedy decoding (ctc: :mod:`unimim.eval.ctc`), and paired comparisons of two inits that say which
direction is better (accuracy: higher; WER: lower)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from unimim.core.batch import LABEL_PAD, Batch
from unimim.eval.compare import paired_bootstrap
from unimim.eval.ctc import LetterVocab, cer, error_rate, greedy_decode, wer
from unimim.eval.finetune.model import FinetuneModel

# the main metric of each task kind and the direction that is better
MAIN_METRIC = {"classification": ("top1", "higher"), "ctc": ("wer", "lower")}


@torch.no_grad()
def evaluate(model: FinetuneModel, batches: Iterable[Batch], *, device: torch.device,
             vocab: Sequence[str] | None = None, autocast: contextlib.AbstractContextManager | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run ``model`` (eval mode) over the test batches.

    Args:
        vocab: ctc only -- the output symbols (the task's ``classes``: blank first, ``|`` the word boundary; a
            :class:`~unimim.eval.ctc.LetterVocab`), which turn target and decoded ids into text.

    Returns, for classification: ``top1``, ``top5`` (top-min(5, C)), ``num_examples``, and per example
    ``labels``, ``predictions`` (argmax class) and ``correct`` (bool list); for ctc: ``wer``, ``cer``,
    ``word_errors`` / ``words``, ``char_errors`` / ``chars`` (summed), ``num_examples``, and per example ``labels``
    (reference texts), ``predictions`` (greedy hypotheses), ``example_word_errors``, ``example_words``,
    ``example_char_errors`` and ``example_chars``.
    """
    letters = None
    if model.kind == "ctc":
        if vocab is None:
            raise ValueError("evaluating a ctc task needs its output vocabulary (vocab=task.classes)")
        letters = LetterVocab(tuple(vocab))
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
        if letters is None:
            k = min(5, logits.shape[-1])
            best = logits.topk(k, dim=-1).indices  # (B, k)
            y = batch.labels.reshape(-1)
            preds += best[:, 0].tolist()
            labels += y.tolist()
            top5 += (best == y[:, None]).any(dim=1).tolist()
        else:
            preds += [letters.decode(h) for h in greedy_decode(logits, lengths)]  # (B, N, V) -> B texts
            labels += [letters.decode([t for t in row if t != LABEL_PAD]) for row in batch.labels.tolist()]
    if not labels:
        raise ValueError("the test split yielded no batches")
    if letters is None:
        correct = [p == y for p, y in zip(preds, labels)]
        return {"top1": sum(correct) / len(correct), "top5": sum(top5) / len(top5), "num_examples": len(labels),
                "labels": labels, "predictions": preds, "correct": correct}
    words = [error_rate([r.split()], [h.split()]) for r, h in zip(labels, preds)]  # per example (errors, words)
    chars = [error_rate([list(" ".join(r.split()))], [list(" ".join(h.split()))]) for r, h in zip(labels, preds)]
    return {"wer": wer(labels, preds), "cer": cer(labels, preds),
            "word_errors": sum(e for e, _ in words), "words": sum(n for _, n in words),
            "char_errors": sum(e for e, _ in chars), "chars": sum(n for _, n in chars), "num_examples": len(labels),
            "labels": labels, "predictions": preds,
            "example_word_errors": [e for e, _ in words], "example_words": [n for _, n in words],
            "example_char_errors": [e for e, _ in chars], "example_chars": [n for _, n in chars]}


def _verdict(out: dict[str, Any], better: str) -> str:
    """Which init the interval favours: ``pretrained``, ``random`` or ``neither`` (it contains 0)."""
    if out["low"] > 0 or out["high"] < 0:
        a_higher = out["low"] > 0
        return "pretrained" if a_higher == (better == "higher") else "random"
    return "neither"


def compare_inits(a: dict[str, Any], b: dict[str, Any], *, seed: int = 0, samples: int = 10_000,
                  level: float = 0.95) -> dict[str, Any]:
    """A (pretrained) minus B (random) on the same test examples with a paired bootstrap interval of the main
    metric: top-1 accuracy (classification; per-example correctness paired; higher is better), or the WER (ctc:
    summed word errors over summed reference words, per-example word errors paired; lower is better). Also
    ``better`` (``higher`` | ``lower``) and ``better_init`` (``pretrained`` | ``random`` | ``neither``: the
    interval contains 0); ctc adds the CER difference under ``cer``."""
    if "correct" in a:
        out = {"metric": "top1", "better": "higher", **paired_bootstrap(
            torch.tensor(a["correct"]), torch.tensor(b["correct"]), seed=seed, samples=samples, level=level)}
        return out | {"better_init": _verdict(out, "higher")}
    if a["labels"] != b["labels"]:
        raise ValueError("the two inits were evaluated on different test examples")
    out = {"metric": "wer", "better": "lower", **paired_rate_bootstrap(
        torch.tensor(a["example_word_errors"]), torch.tensor(b["example_word_errors"]),
        torch.tensor(a["example_words"]), seed=seed, samples=samples, level=level)}
    char = paired_rate_bootstrap(torch.tensor(a["example_char_errors"]), torch.tensor(b["example_char_errors"]),
                                 torch.tensor(a["example_chars"]), seed=seed, samples=samples, level=level)
    return out | {"better_init": _verdict(out, "lower"),
                  "cer": {"metric": "cer", "better": "lower", **char, "better_init": _verdict(char, "lower")}}


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
