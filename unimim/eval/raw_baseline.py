"""The raw-input baseline of a labelled task: the probes on features computed from the input itself, no encoder.

Every pretrained encoder is compared not only with its random twin but with what the raw input gives on the same
train / test splits and with the same probes (:func:`~unimim.eval.probe.linear_probe`,
:func:`~unimim.eval.probe.knn_accuracy`). A modality says how its raw features are made with a
:class:`RawExtractor` (raw pixels, TF-IDF of the tokens, pooled log-mel); nothing here knows a modality.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from unimim.core.batch import Batch
from unimim.eval.probe import ProbeConfig, knn_accuracy, linear_probe, whiten_features

log = logging.getLogger(__name__)


class RawExtractor(Protocol):
    """Turns a labelled task's batches into one raw feature vector per example.

    Attributes:
        name: what the features are, e.g. ``"raw pixels"``; the result reads ``"raw pixels (784-d)"``.
        dense: True for dense features that the baseline standardises with the training split's mean / std
            (pixels, log-mel); False for sparse, row-normalised features that are used as they are (TF-IDF).
    """

    name: str
    dense: bool

    def fit(self, batches: Iterable[Batch]) -> None:
        """Learn what the features need from the training split's batches (TF-IDF: the document frequencies);
        a no-op for features that need nothing. Called once, before any :meth:`transform`."""
        ...

    def transform(self, batch: Batch) -> Tensor:
        """(B, F) float32 features of a batch (on the device of ``batch.inputs``)."""
        ...


def standardise(train_x: Tensor, test_x: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """``(x - mean) / std`` with the training split's per-column mean and (population) std; columns whose std is
    below ``eps`` are only centred. (N, F), (M, F) -> (N, F), (M, F) float32."""
    mean = train_x.mean(dim=0)  # (F,)
    std = train_x.std(dim=0, unbiased=False)  # (F,)
    std = torch.where(std < eps, torch.ones_like(std), std)
    return (train_x - mean) / std, (test_x - mean) / std


def _batches(loader: Iterable[Any], device: torch.device, desc: str, progress: bool) -> Iterator[Batch]:
    for item in tqdm(loader, desc=desc, disable=not progress, leave=False):
        if not isinstance(item, Batch):
            raise ValueError(f"the task's collate must return a Batch, got {type(item).__name__}")
        if item.labels is None or item.labels.dim() != 1:
            raise ValueError("the raw-input baseline classifies: batches need (B,) class ids in Batch.labels")
        yield item.to(device)


@torch.no_grad()
def _extract(extractor: RawExtractor, loader: Iterable[Any], device: torch.device, desc: str,
             progress: bool) -> tuple[Tensor, Tensor]:
    """(N, F) float32 features and (N,) long labels of a split, on the CPU."""
    feats, labels = [], []
    for batch in _batches(loader, device, desc, progress):
        x = extractor.transform(batch)  # (B, F)
        if x.dim() != 2 or x.shape[0] != batch.size:
            raise ValueError(f"{extractor.name}: transform must return (B, F) = ({batch.size}, F) features, got "
                             f"{tuple(x.shape)}")
        feats.append(x.float().cpu())
        labels.append(batch.labels.long().cpu())
    if not feats:
        raise ValueError(f"{desc}: the split yielded no batches")
    return torch.cat(feats), torch.cat(labels)


def raw_input_baseline(
    train_set: Dataset,
    test_set: Dataset,
    collate: Callable[[list[Any]], Batch],
    extractor: RawExtractor,
    probe_cfg: ProbeConfig,
    *,
    device: str | torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Linear probe and kNN on raw features of a labelled task's two splits.

    The extractor is fitted on the training split (its batches, in order), then both splits are turned into
    (N, F) / (M, F) features, batch by batch on ``device``. Dense features (``extractor.dense``) are standardised
    with the training split's mean and std (:func:`standardise`; PCA-whitened instead when ``probe_cfg.whiten``);
    sparse TF-IDF rows are l2-normalised by the extractor and not standardised, as scikit-learn's
    ``TfidfVectorizer`` -> classifier pipeline would use them (the kNN sees them so; :func:`linear_probe` always
    standardises its own input). Both probes then run with ``probe_cfg`` as they do on encoder features
    (``pool`` / ``layers`` do not apply to raw input).

    Memory: both feature matrices in float32 on the CPU and on ``device`` (4 (N + M) F bytes each), plus the
    linear probe's standardised copy.

    Args:
        train_set / test_set: datasets whose items ``collate`` turns into Batches with (B,) ``labels``.
        collate: the task's evaluation collate.
        extractor: the modality's :class:`RawExtractor`.
        probe_cfg: the probes' settings (epochs, lr, weight decay, batch size, kNN k and temperature, whiten, seed).
        device: where features are computed and the probes run.
        batch_size / num_workers: of the (unshuffled) DataLoaders.
        seed: seeds the DataLoaders' worker generator.
        progress: progress bars over the batches.

    Returns:
        JSON-serialisable ``{"features": "<name> (F-d)", "dim": F, "linear", "linear_train", "knn": accuracies in
        [0, 1], "num_train": N, "num_test": M, "predictions": the linear probe's M test predictions, "labels": the
        M test labels, "seconds"}``.
    """
    t0 = time.perf_counter()
    device = torch.device(device)

    def loader(ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(seed))

    extractor.fit(_batches(loader(train_set), device, "fit raw features", progress))
    xtr, ytr = _extract(extractor, loader(train_set), device, "raw features (train)", progress)
    xte, yte = _extract(extractor, loader(test_set), device, "raw features (test)", progress)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"{extractor.name}: train features have {xtr.shape[1]} columns, test {xte.shape[1]}")
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    if extractor.dense:
        if probe_cfg.whiten:
            xtr, xte = whiten_features(xtr, xte, probe_cfg.whiten_eps)
        else:
            xtr, xte = standardise(xtr, xte)
    elif probe_cfg.whiten:
        log.warning("%s: probe.whiten is not applied to sparse features (they stay l2-normalised)", extractor.name)
    lin = linear_probe(xtr, ytr, xte, yte, probe_cfg, progress=progress, return_predictions=True)
    knn = knn_accuracy(xtr, ytr, xte, yte, k=probe_cfg.knn_k, temperature=probe_cfg.knn_temperature)
    dim = int(xtr.shape[1])
    result = {
        "features": f"{extractor.name} ({dim}-d)", "dim": dim,
        "linear": float(lin["test_acc"]), "linear_train": float(lin["train_acc"]), "knn": float(knn),
        "num_train": int(xtr.shape[0]), "num_test": int(xte.shape[0]),
        "predictions": [int(v) for v in lin["test_pred"].cpu().tolist()],
        "labels": [int(v) for v in yte.cpu().tolist()],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("raw-input baseline, %s: linear %.4f, kNN %.4f (%d train / %d test, %.1f s)", result["features"],
             result["linear"], result["knn"], result["num_train"], result["num_test"], result["seconds"])
    return result
