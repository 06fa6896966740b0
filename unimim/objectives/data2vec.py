"""data2vec 1.0 and 2.0: predict the teacher's averaged top-K layer representations at masked positions.

Baevski, Hsu, Xu, Babu, Gu, Auli. "data2vec: A General Framework for Self-supervised Learning in Speech, Vision
and Language", ICML 2022, §3 (Method): the student encodes the masked input (§3.2 mask tokens), an EMA teacher
(§3.3) encodes the unmasked input, targets are the mean of its top-K layers, each normalised (§3.3 "Targets"),
and a regression head predicts them at masked positions (§3.4, smooth-L1 / L2).

Refs: fairseq examples/data2vec/models/data2vec_{audio,text}.py@3d262bb (speech, text);
data2vec_vision beit/engine_for_cyclical.py and modeling_cyclical.py@af9a3634 (vision: block outputs,
per-layer LN + final LN, smooth-L1 beta 2, element mean). Hyper-parameters: ../shared/reference/data2vec.md §2.

``mode: v2`` is data2vec 2.0 (Baevski, Babu, Hsu, Auli. "Efficient Self-supervised Learning with Contextualized
Target Representations for Vision, Speech and Language", ICML 2023, §3): the student encodes only the visible
tokens, a conv decoder (:mod:`unimim.nn.decoder`) predicts every position from them plus noise, and each example
carries R masks that share one teacher pass (multi-mask). Ref: fairseq examples/data2vec/models/data2vec2.py@3d262bb
(data2vec.md §4). Not implemented from 2.0: ALiBi.

The auxiliary cls loss of 2.0 (the student's cls output regresses the mean of the example's targets) is added as
``cls_loss_weight * mean over rows``. The reference adds ``cls_loss * sample_size`` to a sum that is divided by
``sample_size``, i.e. its weight multiplies a *sum* over the rows on one GPU: its 0.01 with 16 images x 16 masks per
GPU corresponds to ``cls_loss_weight = 2.56`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from unimim.core.collapse import channel_std, check_collapse
from unimim.core.ema import EMAConfig
from unimim.core.losses import regression_loss, resolve_scale
from unimim.core.masking import MaskInfo, prepend_unmasked
from unimim.core.targets import Norm, build_targets
from unimim.nn.decoder import ConvDecoder, DecoderConfig, fill_masked
from unimim.nn.encoder import TransformerEncoder
from unimim.objectives.base import ObjectiveOutput
from unimim.objectives.teacher import TeacherStudentObjective


@dataclass
class Data2VecConfig:
    mode: Literal["v1", "v2"] = "v1"               # v1: data2vec 1.0; v2: data2vec 2.0 (visible-only student + decoder)
    top_k: int = 6                                  # K: teacher layers averaged (vision 6, speech 8, text 10)
    target_source: Literal["block", "ffn"] = "block"  # block outputs (vision 1.0) or FFN before residual (speech/text)
    layer_norm: Norm = "layer"                      # per-layer target norm: layer (vision/text), instance (speech)
    final_norm: Norm = "layer"                      # norm of the average: layer (vision 1.0), none (speech/text)
    loss_beta: float = 2.0                          # 0 = L2; > 0 = smooth-L1 with this beta (vision 2, text 4)
    loss_scale: float | str = "inv_dim"             # inv_dim (vision element mean), inv_sqrt_dim (speech), or a number
    head_layers: int = 1                            # 1: Linear (vision, speech); 2: Linear-GELU-Linear x2 width (text)
    ema: EMAConfig = field(
        default_factory=lambda: EMAConfig(decay=0.9998, end_decay=0.9998, schedule="constant")
    )
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # v2 only
    mask_noise_std: float = 0.01                    # v2: std of the noise in masked decoder slots
    cls_loss_weight: float = 0.0                    # cls output regresses the mean target (2.0 image); see below
    min_target_std: float = 0.0                     # collapse floor on the targets' channel std (0 = off)
    min_pred_std: float = 0.0                       # collapse floor on the predictions' channel std (0 = off)
    collapse_after: int = 0                         # check the floors from this optimizer step on (ref: 5000)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"data2vec.top_k must be >= 1, got {self.top_k}")
        if self.head_layers not in (1, 2):
            raise ValueError(f"data2vec.head_layers must be 1 or 2, got {self.head_layers}")
        if self.loss_beta < 0:
            raise ValueError(f"data2vec.loss_beta must be >= 0, got {self.loss_beta}")


StudentOutput = tuple[Tensor, Tensor | None, Tensor | None]  # predictions (B, N, D), cls (B, D), padding (B, N)


def regression_head(dim: int, layers: int) -> nn.Module:
    """Linear (vision/speech ``final_proj``) or Linear(D, 2D)-GELU-Linear(2D, D) (text ``regression_head``)."""
    if layers == 1:
        return nn.Linear(dim, dim)
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class Data2Vec(TeacherStudentObjective):
    """Student (adapter + encoder + head) and an EMA teacher of the backbone (adapter + encoder)."""

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder, cfg: Data2VecConfig) -> None:
        super().__init__(adapter, encoder)
        if cfg.top_k > encoder.cfg.depth:
            raise ValueError(f"data2vec.top_k={cfg.top_k} exceeds encoder.depth={encoder.cfg.depth}")
        self.cfg = cfg
        dim = encoder.cfg.dim
        if cfg.mode == "v1":
            self.head = regression_head(dim, cfg.head_layers)
        else:  # the decoder works on the token grid the adapter declares (images), else on the sequence
            self.decoder = ConvDecoder(cfg.decoder, in_dim=dim, grid=getattr(adapter, "grid", None))
        self.loss_scale = resolve_scale(cfg.loss_scale, dim)
        self.attach_teacher(self.backbone, cfg.ema)

    # -- training ------------------------------------------------------------------------------------------
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

    def forward(self, batch: dict[str, Tensor]) -> ObjectiveOutput:
        """``batch``: inputs, mask (B, N) or (B, R, N) bool (True = masked), optional padding_mask, and optional
        ``student_inputs`` (shaped like ``mask``): the input already corrupted by the masking (BERT's 80/10/10 on
        token ids). The student then sees it as is, while the teacher always sees the clean ``inputs``."""
        inputs, mask = batch["inputs"], batch["mask"]  # mask: (B, N) or (B, R, N) bool, True = masked
        padding_mask = batch.get("padding_mask")
        corrupted = batch.get("student_inputs")
        y = self.targets(inputs, padding_mask)  # (B, N, D): the teacher runs once per example, on clean input
        if mask.dim() == 3:  # R masks per example: the student sees every example R times (2.0 multi-mask)
            r = mask.shape[1]
            mask = mask.flatten(0, 1)  # (B, R, N) -> (B*R, N)
            inputs, y = inputs.repeat_interleave(r, 0), y.repeat_interleave(r, 0)  # (B, ...) -> (B*R, ...)
            if corrupted is not None:
                corrupted = corrupted.flatten(0, 1)  # (B, R, N) -> (B*R, N)
            if padding_mask is not None:
                padding_mask = padding_mask.repeat_interleave(r, 0)

        student = self.student_v2 if self.cfg.mode == "v2" else self.student_v1
        if corrupted is not None:
            if self.cfg.mode == "v2":
                raise ValueError("data2vec 2.0 drops masked tokens; student_inputs (corrupted ids) apply to v1 only")
            pred, cls, pad = self.student_v1(corrupted, mask, padding_mask, substitute=False)
        else:
            pred, cls, pad = student(inputs, mask, padding_mask)  # (B', N, D), (B', D) | None, (B', N) | None
        logs = {}
        cls_loss = None
        if self.cfg.cls_loss_weight > 0:
            if cls is None:
                raise ValueError("data2vec.cls_loss_weight > 0 needs an adapter with a cls token")
            # data2vec 2.0: the student's cls output regresses the mean of the example's targets
            if pad is None:
                cls_target = y.mean(dim=1)  # (B', N, D) -> (B', D)
            else:  # mean over real tokens only
                keep = (~pad).unsqueeze(-1).to(y.dtype)  # (B', N, 1)
                cls_target = (y * keep).sum(1) / keep.sum(1).clamp_min(1)  # (B', D)
            cls_loss = regression_loss(cls, cls_target, beta=self.cfg.loss_beta, scale=self.loss_scale)
            logs["cls_loss"] = float(cls_loss.detach())
        if pad is not None:
            mask = mask & ~pad  # never regress padded positions
        pred, y = pred[mask], y[mask]  # (B', N, D) -> (M, D)
        loss = regression_loss(pred, y, beta=self.cfg.loss_beta, scale=self.loss_scale)
        if cls_loss is not None:
            loss = loss + self.cfg.cls_loss_weight * cls_loss

        stats = {"target_std": float(channel_std(y)), "pred_std": float(channel_std(pred))}
        if self.training and self.num_updates >= self.cfg.collapse_after:
            check_collapse(
                stats, {"target_std": self.cfg.min_target_std, "pred_std": self.cfg.min_pred_std}, self.num_updates
            )
        logs.update(stats, mask_ratio=float(mask.float().mean()))
        return ObjectiveOutput(loss=loss, logs=logs)

    def student_v1(
        self, inputs: Tensor, mask: Tensor, padding_mask: Tensor | None, substitute: bool = True
    ) -> StudentOutput:
        """data2vec 1.0: mask tokens substituted at the input (unless ``substitute`` is False: the input is already
        corrupted), full sequence, linear head.
        Returns predictions (B, N, D), the cls output (B, D) | None and the token padding mask (B, N) | None."""
        p = self.num_prefix_tokens
        tokens = self.adapter.embed(inputs, mask=mask if substitute else None, padding_mask=padding_mask)
        h = self.encoder(tokens).x  # (B, T, D)
        # the head runs on every position so that matrix shapes do not change with the mask count (a new
        # shape costs a kernel re-plan on CPU backends); it is a per-token map, so the result is the same
        pad = None if tokens.padding_mask is None else tokens.padding_mask[:, p:]
        return self.head(h[:, p:]), (h[:, 0] if p else None), pad

    def student_v2(self, inputs: Tensor, mask: Tensor, padding_mask: Tensor | None) -> StudentOutput:
        """data2vec 2.0: the encoder sees only visible tokens; the conv decoder fills in the rest.
        Returns predictions (B, N, D), the cls output (B, D) | None and the token padding mask (B, N) | None."""
        p = self.num_prefix_tokens
        tokens = self.adapter.embed(inputs, padding_mask=padding_mask)
        keep = MaskInfo.from_mask(prepend_unmasked(mask, p)).ids_keep  # (B, T_keep), prefix tokens first
        if keep is None:
            raise ValueError(
                "data2vec 2.0 needs the same number of masked tokens in every row; use a mask that masks an exact "
                "count (masking.kind: inverse_block or random)"
            )
        h = self.encoder(tokens.select(keep)).x  # (B, T_keep, D)
        full = fill_masked(h[:, p:], MaskInfo.from_mask(mask).ids_restore, self.cfg.mask_noise_std)  # (B, N, D)
        pad = None if tokens.padding_mask is None else tokens.padding_mask[:, p:]
        return self.decoder(full), (h[:, 0] if p else None), pad

    def update_teacher(self, step: int) -> dict[str, float]:
        self.num_updates = step
        return {"ema_decay": self.teacher.update(self.backbone, step)}
