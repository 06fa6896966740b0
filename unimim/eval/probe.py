"""Linear and k-nearest-neighbour probes on frozen features.

Both probes take pre-extracted (N, D) features (see :mod:`unimim.eval.features`) and integer class labels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Settings for :func:`linear_probe` and :func:`knn_accuracy`.

    Attributes:
        epochs: epochs of the linear classifier (mini-batch; a single batch per epoch when N <= batch_size).
        lr: peak AdamW learning rate, decayed to 0 with a per-step cosine schedule.
        weight_decay: AdamW weight decay, applied to the weight matrix only (not the bias).
        batch_size: mini-batch size of the linear classifier.
        knn_k: number of neighbours of the kNN probe.
        knn_temperature: temperature T of the kNN vote weights ``exp(sim / T)``.
        pool: token pooling used when extracting features (consumed by the caller, not by the probes).
        layers: encoder blocks whose outputs are averaged before pooling (0-based, negative from the end; e.g.
            ``[-1]`` is the last block's output without the encoder's final norm, ``[-2, -1]`` the mean of the last
            two); ``None`` pools the encoder's final output. Consumed by the caller, like ``pool``; the same
            setting is applied to every encoder that is compared.
        whiten: PCA-whiten the features with the training set's mean and covariance before both probes (see
            :func:`whiten_features`; consumed by the caller). Features whose variance sits in a few directions
            (anisotropic token embeddings) otherwise give a badly conditioned linear probe and a kNN metric ruled
            by those directions.
        whiten_eps: covariance regulariser of the whitening, relative to the mean eigenvalue.
        seed: seed of the mini-batch shuffling generator.
    """

    epochs: int = 100
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 4096
    knn_k: int = 20
    knn_temperature: float = 0.07
    pool: Literal["mean", "cls", "mean_cls"] = "mean"
    layers: list[int] | None = None
    whiten: bool = False
    whiten_eps: float = 1e-3
    seed: int = 0


def _check_split(x: Tensor, y: Tensor, name: str) -> None:
    """Validate one (N, D) feature / (N,) label pair."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"{name} features and labels must be torch Tensors")
    if x.dim() != 2:
        raise ValueError(f"{name}_x must be (N, D), got shape {tuple(x.shape)}")
    if y.dim() != 1:
        raise ValueError(f"{name}_y must be (N,), got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}_x has {x.shape[0]} rows but {name}_y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError(f"{name} set is empty")
    if x.shape[1] == 0:
        raise ValueError(f"{name}_x has zero feature dimensions")
    if not x.is_floating_point():
        raise ValueError(f"{name}_x must be floating point, got {x.dtype}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name}_y must hold integer class labels, got {y.dtype}")
    if bool((y < 0).any()):
        raise ValueError(f"{name}_y has negative labels; class labels must be non-negative integers")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_bad = int((~finite.all(dim=1)).sum())
        raise ValueError(
            f"{name}_x has NaN/Inf values in {n_bad} of {x.shape[0]} rows; the encoder produced non-finite "
            "features, which means it is broken (diverged training, bad checkpoint or overflow in low precision)"
        )


def _check_pair(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> None:
    """Validate both splits and their compatibility."""
    _check_split(train_x, train_y, "train")
    _check_split(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has dim {train_x.shape[1]} but test_x has dim {test_x.shape[1]}")


@torch.no_grad()
def whiten_features(train_x: Tensor, test_x: Tensor, eps: float = 1e-3) -> tuple[Tensor, Tensor]:
    """PCA whitening fitted on the training features: ``(x - mean) @ V diag((lambda + eps * mean(lambda))^-1/2)``.

    ``lambda, V`` are the eigenvalues / eigenvectors of the training covariance (computed in float64), so the
    whitened training features have (nearly) identity covariance. The transform is fitted on ``train_x`` only and
    applied to both splits.

    Args:
        train_x: (N, D) float training features, N >= 2.
        test_x: (M, D) float test features.
        eps: regulariser added to every eigenvalue, relative to their mean; > 0.

    Returns:
        ``(train, test)``: (N, D) and (M, D) float32 whitened features.
    """
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"whitening needs (N, D) and (M, D) features, got {tuple(train_x.shape)} and "
                         f"{tuple(test_x.shape)}")
    if train_x.shape[0] < 2:
        raise ValueError("whitening needs at least 2 training rows to estimate a covariance")
    if not eps > 0:
        raise ValueError(f"whiten_eps must be > 0, got {eps}")
    xtr = train_x.double()
    mean = xtr.mean(dim=0)  # (D,)
    cov = torch.cov((xtr - mean).T)  # (D, D)
    lam, vecs = torch.linalg.eigh(cov)  # (D,), (D, D)
    lam = lam.clamp_min(0.0)
    scale = (lam + eps * lam.mean().clamp_min(torch.finfo(torch.float64).tiny)).rsqrt()  # (D,)
    w = vecs * scale  # (D, D): column j = eigenvector j / sqrt(lambda_j + eps')
    return ((xtr - mean) @ w).float(), ((test_x.double() - mean) @ w).float()


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 65536) -> tuple[Tensor, float]:
    """Predicted classes (N,) long and mean cross-entropy of ``model`` on (N, D) features ``x`` and (N,) labels."""
    preds = []
    loss_sum = 0.0
    for s in range(0, x.shape[0], chunk):
        logits = model(x[s : s + chunk])  # (n, C)
        preds.append(logits.argmax(dim=1))
        loss_sum += float(F.cross_entropy(logits, y[s : s + chunk], reduction="sum"))
    return torch.cat(preds), loss_sum / x.shape[0]


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    cfg: ProbeConfig,
    *,
    progress: bool = False,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Train a linear softmax classifier on frozen features and report accuracies.

    Features are standardised with the training mean and std (dimensions with std < 1e-6 are only centred).
    The classifier (zero-initialised ``nn.Linear``) is trained with cross-entropy and AdamW on mini-batches
    shuffled by a ``torch.Generator`` seeded with ``cfg.seed``, under a per-step cosine learning-rate
    schedule. Runs on the device of ``train_x``; results are deterministic for a fixed thread count.

    Args:
        train_x: (N, D) float training features.
        train_y: (N,) integer training labels (non-negative).
        test_x: (M, D) float test features.
        test_y: (M,) integer test labels (non-negative).
        cfg: probe settings (``epochs``, ``lr``, ``weight_decay``, ``batch_size``, ``seed`` are used).
        progress: show a tqdm progress bar over epochs.
        return_predictions: also return ``"test_pred"``, the (M,) long predicted classes of the test rows (for a
            paired comparison of two encoders on the same examples, :mod:`unimim.eval.compare`).

    Returns:
        ``{"train_acc", "test_acc", "train_loss", "test_loss", "num_classes"}``: top-1 accuracies in [0, 1]
        and mean cross-entropies of the final classifier, and the number of classes C it was trained with
        (floats); plus ``"test_pred"`` when asked for.

    Raises:
        ValueError: on mismatched lengths or dims, empty sets, negative or non-integer labels, NaN/Inf
            features, or invalid config values.
    """
    _check_pair(train_x, train_y, test_x, test_y)
    if cfg.epochs < 1:
        raise ValueError(f"cfg.epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"cfg.batch_size must be >= 1, got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise ValueError(f"cfg.lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ValueError(f"cfg.weight_decay must be >= 0, got {cfg.weight_decay}")

    device = train_x.device
    xtr = train_x.detach().float()
    xte = test_x.detach().to(device).float()
    ytr = train_y.detach().long()
    yte = test_y.detach().to(device).long()

    mean = xtr.mean(dim=0)  # (D,)
    std = xtr.std(dim=0, unbiased=False)  # (D,)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    xtr = (xtr - mean) / std  # (N, D), a new tensor; inputs are untouched
    xte = (xte - mean) / std  # (M, D)

    num_classes = int(max(int(ytr.max()), int(yte.max()))) + 1
    n, d = xtr.shape
    model = nn.Linear(d, num_classes).to(device)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.AdamW(
        [
            {"params": [model.weight], "weight_decay": cfg.weight_decay},
            {"params": [model.bias], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )

    bs = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total_steps = cfg.epochs * steps_per_epoch
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    step = 0
    for _ in tqdm(range(cfg.epochs), desc="linear probe", disable=not progress, leave=False):
        perm = torch.randperm(n, generator=gen).to(device) if steps_per_epoch > 1 else None
        for s in range(0, n, bs):
            lr = 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / total_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            if perm is None:
                xb, yb = xtr, ytr
            else:
                idx = perm[s : s + bs]
                xb, yb = xtr.index_select(0, idx), ytr.index_select(0, idx)  # (b, D), (b,)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1

    model.eval()
    train_pred, train_loss = _predict(model, xtr, ytr)
    test_pred, test_loss = _predict(model, xte, yte)
    train_acc = int((train_pred == ytr).sum()) / n
    test_acc = int((test_pred == yte).sum()) / xte.shape[0]
    out = {
        "train_acc": train_acc,
        "test_acc": test_acc,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "num_classes": float(num_classes),
    }
    if return_predictions:
        out["test_pred"] = test_pred
    logger.info(
        "linear probe: train_acc=%.4f test_acc=%.4f (N=%d, M=%d, D=%d, C=%d, %d steps)",
        train_acc, test_acc, n, xte.shape[0], d, num_classes, total_steps,
    )
    return out


@torch.no_grad()
def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    k: int,
    temperature: float,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of a cosine-similarity weighted kNN classifier, as in DINO.

    Each test row takes its ``k`` most cosine-similar training rows; neighbour ``j`` votes for its class with
    weight ``exp(sim_j / temperature)`` and the class with the largest total wins. Test rows are processed
    ``chunk_size`` at a time so memory is O(chunk_size * N) for the similarity block.

    Args:
        train_x: (N, D) float training features.
        train_y: (N,) non-negative integer labels (need not be contiguous).
        test_x: (M, D) float test features.
        test_y: (M,) non-negative integer labels.
        k: number of neighbours; clamped to N if larger.
        temperature: vote temperature T > 0.
        chunk_size: number of test rows per similarity block.

    Returns:
        Accuracy in [0, 1].
    """
    _check_pair(train_x, train_y, test_x, test_y)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    device = train_x.device
    k = min(k, train_x.shape[0])
    classes, ytr = torch.unique(train_y.to(device).long(), return_inverse=True)  # (C,), (N,) in [0, C)
    num_classes = classes.shape[0]
    xtr = F.normalize(train_x.float(), dim=1)  # (N, D)
    xte = F.normalize(test_x.to(device).float(), dim=1)  # (M, D)
    yte = test_y.to(device).long()

    correct = 0
    for s in range(0, xte.shape[0], chunk_size):
        sim = xte[s : s + chunk_size] @ xtr.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()  # (m, k)
        votes = torch.zeros(sim.shape[0], num_classes, device=device, dtype=weights.dtype)  # (m, C)
        votes.scatter_add_(1, ytr[top_idx], weights)
        pred = classes[votes.argmax(dim=1)]  # (m,) original label values
        correct += int((pred == yte[s : s + chunk_size]).sum())
    acc = correct / xte.shape[0]
    logger.info("kNN probe: acc=%.4f (k=%d, T=%g)", acc, k, temperature)
    return acc


def format_probe_table(rows: list[dict]) -> str:
    """Render probe results as an aligned plain-text table.

    Columns are the union of the rows' keys in order of first appearance. Floats are shown with 4 decimals,
    missing cells as ``-``; text columns are left-aligned, numeric ones right-aligned.

    Example::

        >>> print(format_probe_table([{"encoder": "pretrained", "linear": 0.81, "knn": 0.79}]))
        encoder     linear     knn
        ----------  ------  ------
        pretrained  0.8100  0.7900
    """
    if not rows:
        return "(no results)"
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(
            isinstance(row[c], (int, float)) and not isinstance(row[c], bool)
            for row in rows
            if row.get(c) is not None
        )
        for c in columns
    ]
    widths = [max(len(str(c)), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line([str(c) for c in columns]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)
