"""Frozen-encoder feature extraction for probing.

The encoder is treated as a black box ``encode(inputs) -> tokens`` of shape (B, T, D) whose first
``num_prefix_tokens`` tokens are prefix tokens (cls, registers, ...). Token features are pooled into one
vector per sample. Nothing here knows about a modality.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from unimim.core.batch import Batch

logger = logging.getLogger(__name__)

PoolMode = Literal["mean", "cls", "mean_cls"]
POOL_MODES: tuple[str, ...] = ("mean", "cls", "mean_cls")


def pool_tokens(
    tokens: Tensor,
    *,
    pool: PoolMode = "mean",
    num_prefix_tokens: int = 1,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """Pool token features into one vector per sample.

    Args:
        tokens: (B, T, D) token features, the first ``num_prefix_tokens`` of which are prefix tokens.
        pool: ``"mean"``: mean over non-prefix, non-padded tokens -> (B, D); ``"cls"``: token 0 -> (B, D);
            ``"mean_cls"``: ``cat([mean, cls], dim=-1)`` -> (B, 2D).
        num_prefix_tokens: number P of prefix tokens at the start of the sequence.
        padding_mask: optional bool mask, ``True`` = padding, either (B, T) over all tokens or
            (B, T - P) over the non-prefix tokens only. Prefix tokens are never part of the mean.

    Returns:
        (B, D) or (B, 2D) pooled features in the dtype of ``tokens``.
    """
    if pool not in POOL_MODES:
        raise ValueError(f"pool must be one of {POOL_MODES}, got {pool!r}")
    if tokens.dim() != 3:
        raise ValueError(f"encode must return (B, T, D) token features, got shape {tuple(tokens.shape)}")
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    B, T, _ = tokens.shape
    P = num_prefix_tokens
    if P > T:
        raise ValueError(f"num_prefix_tokens={P} exceeds the sequence length T={T}")

    pooled: list[Tensor] = []
    if pool in ("mean", "mean_cls"):
        body = tokens[:, P:]  # (B, T - P, D)
        if body.shape[1] == 0:
            raise ValueError(f"mean pooling needs non-prefix tokens, but T={T} equals num_prefix_tokens={P}")
        if padding_mask is None:
            mean = body.mean(dim=1)  # (B, D)
        else:
            keep = _body_keep_mask(padding_mask, B=B, T=T, P=P).to(tokens.device)  # (B, T - P) bool
            counts = keep.sum(dim=1)  # (B,)
            if bool((counts == 0).any()):
                bad = torch.nonzero(counts == 0).flatten().tolist()
                raise ValueError(f"padding_mask leaves no non-prefix tokens to mean-pool in batch rows {bad}")
            w = keep.to(body.dtype).unsqueeze(-1)  # (B, T - P, 1)
            mean = (body * w).sum(dim=1) / counts.to(body.dtype).unsqueeze(-1)  # (B, D)
        pooled.append(mean)
    if pool in ("cls", "mean_cls"):
        if P < 1:
            raise ValueError(f"pool={pool!r} needs a cls token, but num_prefix_tokens={P}")
        pooled.append(tokens[:, 0])  # (B, D)
    return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)


def _body_keep_mask(padding_mask: Tensor, *, B: int, T: int, P: int) -> Tensor:
    """Turn a padding mask into a (B, T - P) bool mask, ``True`` = real non-prefix token."""
    if padding_mask.dim() != 2 or padding_mask.shape[0] != B:
        raise ValueError(f"padding_mask must be (B, T) with B={B}, got shape {tuple(padding_mask.shape)}")
    padding_mask = padding_mask.bool()
    if padding_mask.shape[1] == T:
        return ~padding_mask[:, P:]
    if padding_mask.shape[1] == T - P:
        return ~padding_mask
    raise ValueError(
        f"padding_mask has {padding_mask.shape[1]} columns; expected T={T} (all tokens) "
        f"or T - num_prefix_tokens={T - P} (non-prefix tokens)"
    )


def _to_device(x: Any, device: torch.device) -> Any:
    """Move a tensor (or a mapping / sequence of tensors) to ``device``; other objects pass through."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _unpack(item: Any) -> tuple[Any, Any, Tensor | None]:
    """Split a loader item into ``(inputs, labels, padding_mask or None)``."""
    if isinstance(item, Batch):
        if item.labels is None:
            raise ValueError("a labelled task's batches need labels (Batch.labels)")
        return item.inputs, item.labels, item.padding_mask
    if isinstance(item, Mapping):
        missing = [k for k in ("inputs", "labels") if k not in item]
        if missing:
            raise ValueError(f"dict batches need keys 'inputs' and 'labels'; missing {missing}")
        return item["inputs"], item["labels"], item.get("padding_mask")
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return item[0], item[1], None
    raise ValueError(
        "loader items must be (inputs, labels) pairs or dicts with 'inputs', 'labels' and optional "
        f"'padding_mask'; got {type(item).__name__}"
        + (f" of length {len(item)}" if isinstance(item, (list, tuple)) else "")
    )


@torch.no_grad()
def extract_features(
    encode: Callable[..., Tensor],
    loader: Iterable,
    *,
    pool: PoolMode = "mean",
    num_prefix_tokens: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = True,
    token_padding: Callable[[Tensor | None, int], Tensor | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Run a frozen encoder over a loader and pool its tokens into one feature vector per sample.

    The caller is responsible for putting the encoder in eval mode.

    Args:
        encode: ``encode(inputs) -> (B, T, D)`` token features, prefix tokens first. For dict batches with
            a ``padding_mask`` it is called as ``encode(inputs, padding_mask)``.
        loader: iterable of :class:`~unimim.core.batch.Batch` (a labelled task's), ``(inputs, labels)`` pairs or
            dicts ``{"inputs", "labels", "padding_mask"?}``;
            ``labels`` is (B,) integer, ``padding_mask`` is (B, T) or (B, T - num_prefix_tokens) bool,
            ``True`` = padding. Padded tokens are excluded from mean pooling.
        pool: ``"mean"``, ``"cls"`` or ``"mean_cls"`` (see :func:`pool_tokens`).
        num_prefix_tokens: number of prefix tokens at the start of the encoder output.
        device: device the inputs are moved to before ``encode``.
        dtype: if given (e.g. ``torch.bfloat16``), ``encode`` runs under ``torch.autocast(device_type, dtype)``.
        progress: show a tqdm progress bar.
        token_padding: ``(input padding_mask, N) -> (B, N)`` padding of the N non-prefix tokens, for an input-level
            padding mask that is not the token padding (speech: samples vs frames; see
            :class:`~unimim.eval.task.LabelledTask`); None: the padding mask is the token padding.

    Returns:
        ``(features, labels)``: (S, D') float32 and (S,) long, both on CPU, where S is the number of samples
        and D' is D, or 2D for ``"mean_cls"``.
    """
    if pool not in POOL_MODES:
        raise ValueError(f"pool must be one of {POOL_MODES}, got {pool!r}")
    device = torch.device(device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )

    feats: list[Tensor] = []
    labels: list[Tensor] = []
    for item in tqdm(loader, desc="extract features", disable=not progress, leave=False):
        inputs, y, padding_mask = _unpack(item)
        inputs = _to_device(inputs, device)
        with autocast:
            if padding_mask is not None:
                padding_mask = padding_mask.to(device)
                tokens = encode(inputs, padding_mask)
            else:
                tokens = encode(inputs)
        if not isinstance(tokens, Tensor):
            raise ValueError(f"encode must return a Tensor of shape (B, T, D), got {type(tokens).__name__}")
        token_pad = padding_mask
        if padding_mask is not None and token_padding is not None:
            token_pad = token_padding(padding_mask, tokens.shape[1] - num_prefix_tokens)  # (B, N)
        pooled = pool_tokens(
            tokens.float(), pool=pool, num_prefix_tokens=num_prefix_tokens, padding_mask=token_pad
        )  # (B, D')
        y = torch.as_tensor(y).reshape(-1)
        if y.shape[0] != pooled.shape[0]:
            raise ValueError(f"batch has {pooled.shape[0]} feature rows but {y.shape[0]} labels")
        feats.append(pooled.cpu())
        labels.append(y.long().cpu())

    if not feats:
        raise ValueError("loader yielded no batches; cannot extract features")
    features = torch.cat(feats, dim=0)
    all_labels = torch.cat(labels, dim=0)
    logger.info("extracted %d features of dim %d (pool=%s)", features.shape[0], features.shape[1], pool)
    return features, all_labels
