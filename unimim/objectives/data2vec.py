"""data2vec 1.0: predict the teacher's averaged top-K layer representations at masked positions.

Baevski, Hsu, Xu, Babu, Gu, Auli. "data2vec: A General Framework for Self-supervised Learning in Speech, Vision
and Language", ICML 2022, §3 (Method): the student encodes the masked input (§3.2 mask tokens), an EMA teacher
(§3.3) encodes the unmasked input, targets are the mean of its top-K layers, each normalised (§3.3 "Targets"),
and a regression head predicts them at masked positions (§3.4, smooth-L1 / L2).

Refs: fairseq examples/data2vec/models/data2vec_{audio,text}.py@3d262bb (speech, text);
data2vec_vision beit/engine_for_cyclical.py and modeling_cyclical.py@af9a3634 (vision: block outputs,
per-layer LN + final LN, smooth-L1 beta 2, element mean). Hyper-parameters: ../shared/reference/data2vec.md §2.

This module also holds what data2vec 2.0 (:mod:`unimim.objectives.data2vec2`) shares with 1.0: the target
config, the teacher's targets, the R-masks-per-example bookkeeping, the regression and cls losses and the collapse
watch (:class:`Data2VecBase`). The two differ only in the student (:meth:`Data2VecBase.student`).

The auxiliary cls loss (the student's cls output regresses the mean of the example's targets; data2vec 2.0 image)
is added as ``cls_loss_weight * mean over rows``. The reference adds ``cls_loss * sample_size`` to a sum that is
divided by ``sample_size``, i.e. its weight multiplies a *sum* over the rows on one GPU: its 0.01 with 16 images x
16 masks per GPU corresponds to ``cls_loss_weight = 2.56`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from unimim.core.batch import Batch
from unimim.core.collapse import channel_std, check_collapse
from unimim.core.ema import EMAConfig
from unimim.core.losses import regression_loss, resolve_scale
from unimim.core.targets import Norm, build_targets
from unimim.nn.encoder import TransformerEncoder
from unimim.nn.tokens import Tokens
from unimim.objectives.base import ObjectiveOutput
from unimim.objectives.teacher import TeacherStudentObjective


@dataclass
class Data2VecTargetConfig:
    """What data2vec 1.0 and 2.0 share: the teacher, its targets, the loss and the collapse floors."""

    top_k: int = 6                                  # K: teacher layers averaged (vision 6, speech 8, text 10)
    target_source: Literal["block", "ffn"] = "block"  # block outputs (vision 1.0) or FFN before residual (speech/text)
    layer_norm: Norm = "layer"                      # per-layer target norm: layer (vision/text), instance (speech)
    final_norm: Norm = "layer"                      # norm of the average: layer (vision 1.0), none (speech/text)
    loss_beta: float = 2.0                          # 0 = L2; > 0 = smooth-L1 with this beta (vision 2, text 4)
    loss_scale: float | str = "inv_dim"             # inv_dim (vision element mean), inv_sqrt_dim (speech), or a number
    ema: EMAConfig = field(
        default_factory=lambda: EMAConfig(decay=0.9998, end_decay=0.9998, schedule="constant")
    )
    cls_loss_weight: float = 0.0                    # cls output regresses the mean target (2.0 image); module doc
    min_target_std: float = 0.0                     # collapse floor on the targets' channel std (0 = off)
    min_pred_std: float = 0.0                       # collapse floor on the predictions' channel std (0 = off)
    collapse_after: int = 0                         # check the floors from this optimizer step on (ref: 5000)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"data2vec.top_k must be >= 1, got {self.top_k}")
        if self.loss_beta < 0:
            raise ValueError(f"data2vec.loss_beta must be >= 0, got {self.loss_beta}")


@dataclass
class Data2VecConfig(Data2VecTargetConfig):
    head_layers: int = 1                            # 1: Linear (vision, speech); 2: Linear-GELU-Linear x2 width (text)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_layers not in (1, 2):
            raise ValueError(f"data2vec.head_layers must be 1 or 2, got {self.head_layers}")


StudentOutput = tuple[Tensor, Tensor | None, Tensor | None]  # predictions (B, N, D), cls (B, D), padding (B, N)


def regression_head(dim: int, layers: int) -> nn.Module:
    """Linear (vision/speech ``final_proj``) or Linear(D, 2D)-GELU-Linear(2D, D) (text ``regression_head``)."""
    if layers == 1:
        return nn.Linear(dim, dim)
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class Data2VecBase(TeacherStudentObjective):
    """Student backbone (adapter + encoder) and an EMA teacher of it; subclasses define :meth:`student`."""

    cfg: Data2VecTargetConfig

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder, cfg: Data2VecTargetConfig) -> None:
        super().__init__(adapter, encoder)
        if cfg.top_k > encoder.cfg.depth:
            raise ValueError(f"data2vec.top_k={cfg.top_k} exceeds encoder.depth={encoder.cfg.depth}")
        self.cfg = cfg
        self.loss_scale = resolve_scale(cfg.loss_scale, encoder.cfg.dim)

    def student(self, local: Tokens, mask: Tensor, corrupted: bool = False) -> StudentOutput:
        """local: the adapter's local features of the student's input (B', N, D), mask (B', N) -> predictions
        (B', N, D), the cls output (B', D) | None and the token padding mask (B', N) | None. ``corrupted``: the
        features are of the input already corrupted by the masking (BERT), used as they are."""
        raise NotImplementedError

    def student_features(self, inputs: Tensor, padding_mask: Tensor | None, r: int) -> Tokens:
        """The local encoder (patch embedding, conv waveform encoder, token embedding) runs once per example and
        its output is repeated for the example's R masks: (B, ...) -> Tokens (B*R, N, D). The reference clones
        after the local encoder too (fairseq ``contextualized_features``: ``x.repeat_interleave(clone_batch)``
        after ``local_features``), which for speech spares R - 1 runs of the conv feature encoder."""
        return self.adapter.local(inputs, padding_mask).repeat_interleave(r)

    @torch.no_grad()
    def targets(self, inputs: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Teacher targets for every non-prefix token: (B, N, D), float32."""
        teacher = self.teacher.module
        tokens = teacher["adapter"].embed(inputs, padding_mask=padding_mask)
        out = teacher["encoder"](tokens)
        layers = out.ffn if self.cfg.target_source == "ffn" else out.layers
        p = self.num_prefix_tokens
        layers = [h[:, p:] for h in layers]  # L x (B, T, D) -> L x (B, N, D)
        pad = None if tokens.padding_mask is None else tokens.padding_mask[:, p:]  # (B, N)
        return build_targets(
            layers, top_k=self.cfg.top_k, layer_norm=self.cfg.layer_norm, final_norm=self.cfg.final_norm,
            padding_mask=pad,
        )

    def forward(self, batch: Batch) -> ObjectiveOutput:
        """``batch.mask`` (B, R, N): R masks per example share one teacher pass (the teacher sees the clean
        ``inputs``); the student sees every example R times. ``batch.student_inputs`` (B, R, N), when present, is
        the input corrupted by the masking (BERT's 80/10/10 on token ids), which the student sees as it is."""
        inputs, padding_mask, corrupted = batch.inputs, batch.padding_mask, batch.student_inputs
        r = batch.num_masks
        if r == 0:
            raise ValueError("data2vec needs a mask in the batch")
        mask = batch.mask.flatten(0, 1)  # (B, R, N) -> (B*R, N)
        y = self.targets(inputs, padding_mask)  # (B, N, D): the teacher runs once per example, on clean input
        if r > 1:
            y = y.repeat_interleave(r, 0)  # (B, N, D) -> (B*R, N, D)
        if corrupted is not None:  # one corrupted input per mask: (B, R, N) -> (B*R, N)
            if padding_mask is not None:
                padding_mask = padding_mask.repeat_interleave(r, 0)
            local = self.adapter.local(corrupted.flatten(0, 1), padding_mask)
        else:
            local = self.student_features(inputs, padding_mask, r)  # Tokens (B*R, N, D)
        pred, cls, pad = self.student(local, mask, corrupted is not None)  # (B', N, D), (B', D) | None, ...

        logs = {}
        cls_loss = None
        if self.cfg.cls_loss_weight > 0:
            if cls is None:
                raise ValueError("data2vec.cls_loss_weight > 0 needs an adapter with a cls token")
            # the student's cls output regresses the mean of the example's targets
            if pad is None:
                cls_target = y.mean(dim=1)  # (B', N, D) -> (B', D)
            else:  # mean over real tokens only
                keep = (~pad).unsqueeze(-1).to(y.dtype)  # (B', N, 1)
                cls_target = (y * keep).sum(1) / keep.sum(1).clamp_min(1)  # (B', D)
            cls_loss = regression_loss(cls, cls_target, beta=self.cfg.loss_beta, scale=self.loss_scale)
            logs["cls_loss"] = cls_loss.detach()
        if pad is not None:
            mask = mask & ~pad  # never regress padded positions
        pred, y = pred[mask], y[mask]  # (B', N, D) -> (M, D)
        loss = regression_loss(pred, y, beta=self.cfg.loss_beta, scale=self.loss_scale)
        if cls_loss is not None:
            loss = loss + self.cfg.cls_loss_weight * cls_loss

        stats = {"target_std": channel_std(y), "pred_std": channel_std(pred)}  # () each, on the device
        if self.training and self.num_updates >= self.cfg.collapse_after:
            check_collapse(
                stats, {"target_std": self.cfg.min_target_std, "pred_std": self.cfg.min_pred_std}, self.num_updates
            )
        logs.update(stats, mask_ratio=mask.float().mean())
        return ObjectiveOutput(loss=loss, logs=logs)

    def update_teacher(self, step: int) -> dict[str, float]:
        self.num_updates = step
        return {"ema_decay": self.teacher.update(self.backbone, step)}


class Data2Vec(Data2VecBase):
    """data2vec 1.0: mask tokens substituted at the input, the full sequence through the encoder, a regression
    head at every position."""

    cfg: Data2VecConfig

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder, cfg: Data2VecConfig) -> None:
        super().__init__(adapter, encoder, cfg)
        self.head = regression_head(encoder.cfg.dim, cfg.head_layers)
        self.attach_teacher(self.backbone, cfg.ema)

    def student(self, local: Tokens, mask: Tensor, corrupted: bool = False) -> StudentOutput:
        """Mask tokens substituted at the input (or, with ``corrupted``, the already corrupted input as it is)."""
        p = self.num_prefix_tokens
        tokens = self.adapter.embed_features(local, None if corrupted else mask)
        h = self.encoder(tokens).x  # (B, T, D)
        # the head runs on every position so that matrix shapes do not change with the mask count (a new
        # shape costs a kernel re-plan on CPU backends); it is a per-token map, so the result is the same
        pad = None if tokens.padding_mask is None else tokens.padding_mask[:, p:]
        return self.head(h[:, p:]), (h[:, 0] if p else None), pad
