"""iBOT: masked image modeling with an online tokenizer (self-distillation on cls and masked patch tokens).

Zhou, Wei, Wang, Shen, Xie, Yuille, Kong. "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022, §3.2
(Eq. 1-2) and App. A. An EMA teacher (backbone + projection head, momentum 0.996 -> 1 on a cosine schedule) sees the
unmasked global views; the student sees them block-masked (mask tokens at the input) plus optional local crops. The
shared projection head maps cls and patch tokens to K prototype scores; teacher scores are centred (EMA of the batch
mean, momentum 0.9) and sharpened (temperature warmed up 0.04 -> 0.07), student scores use temperature 0.1.
loss = cls_weight * mean over (teacher view q, student view v != q) of CE(teacher cls_q, student cls_v)
     + patch_weight * mean over views v of [per image: mean over its masked patches of CE(teacher patch, student
       patch)], averaged over the batch (images without a mask count as 0, as in the reference).
Ref: bytedance/ibot main_ibot.py (``iBOTLoss``, schedules), models/head.py@da316d82
(../shared/reference/masked-image-modeling.md §1.5). The multi-view data come from :mod:`modalities.image.data.views`.

The reference's cosine weight-decay schedule (0.04 -> 0.4) and per-parameter gradient clipping (3.0) are engine
settings (``optim.weight_decay_end``, ``optim.clip_mode: per_param``), set in the paper-scale recipes.

Collapse watch: the entropy of the batch-mean teacher and student cls distributions is logged (it drops towards 0 when
every image maps to the same prototype) along with the mean per-image entropies; ``min_entropy`` is a floor on the
two batch-mean entropies that stops the run with :class:`unimim.core.collapse.CollapseError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.base import ObjectiveSpec, require, vit_objective
from modalities.image.objectives.ibot_head import HeadConfig, ProjectionHead
from unimim.core.batch import Batch
from unimim.core.collapse import CollapseError
from unimim.core.ema import EMAConfig
from unimim.nn.encoder import TransformerEncoder
from unimim.objectives.base import ObjectiveOutput, encode_with
from unimim.objectives.teacher import TeacherStudentObjective


@dataclass
class IBOTConfig:
    head: HeadConfig = field(default_factory=HeadConfig)
    ema: EMAConfig = field(
        default_factory=lambda: EMAConfig(decay=0.996, end_decay=1.0, anneal_steps=100_000, schedule="cosine")
    )
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04  # teacher temperature at step 0
    teacher_temp: float = 0.07         # after teacher_temp_warmup_steps (linear warm-up)
    teacher_temp_warmup_steps: int = 1000
    center_momentum: float = 0.9
    cls_weight: float = 1.0            # lambda_1
    patch_weight: float = 1.0          # lambda_2
    freeze_last_layer_steps: int = 0   # prototypes get no gradient for these first steps (reference: 1 epoch)
    min_entropy: float = 0.0           # floor (nats) on the batch-mean cls entropies, teacher and student (0 = off)
    collapse_after: int = 0            # check the floor from this optimizer step on
    encode_with: Literal["teacher", "student"] = "teacher"  # backbone used by `encode` (iBOT evaluates the teacher)

    def __post_init__(self) -> None:
        if min(self.student_temp, self.warmup_teacher_temp, self.teacher_temp) <= 0:
            raise ValueError("method temperatures must be > 0")
        if not 0.0 <= self.center_momentum < 1.0:
            raise ValueError(f"method.center_momentum must be in [0, 1), got {self.center_momentum}")


def teacher_temp_at(cfg: IBOTConfig, step: int) -> float:
    """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over ``teacher_temp_warmup_steps``."""
    if step >= cfg.teacher_temp_warmup_steps:
        return cfg.teacher_temp
    return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * step / cfg.teacher_temp_warmup_steps


def entropy(p: Tensor) -> Tensor:
    """(..., K) probabilities -> (...) entropies in nats."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


class IBOT(TeacherStudentObjective):
    """Student backbone + shared projection ``head``; EMA teacher of both; cls and patch centres as buffers."""

    def __init__(self, adapter: nn.Module, encoder: TransformerEncoder, cfg: IBOTConfig) -> None:
        super().__init__(adapter, encoder)
        if adapter.num_prefix_tokens != 1:
            raise ValueError("iBOT needs an adapter with a cls token (adapter.cls_token: true)")
        self.cfg = cfg
        self.head = ProjectionHead(encoder.cfg.dim, cfg.head)
        self.register_buffer("center", torch.zeros(1, cfg.head.out_dim))
        self.register_buffer("center_patch", torch.zeros(1, 1, cfg.head.out_dim))
        # names "backbone.*" and "head.*" match the student's own parameter names, so update(self) pairs them
        self.attach_teacher(nn.ModuleDict({"backbone": self.backbone, "head": self.head}), cfg.ema)

    def encode(self, inputs: Tensor, padding_mask: Tensor | None = None,
               layers: Sequence[int] | None = None, *, mask: Tensor | None = None) -> Tensor:
        """(B, C, S, S) -> (B, 1 + N, D) features of the teacher (default) or student backbone (``layers``, ``mask``
        (B, N) bool: see :meth:`Objective.encode`)."""
        backbone = self.encoding_backbone()
        return encode_with(backbone["adapter"], backbone["encoder"], inputs, padding_mask, layers, mask=mask)

    def encoding_backbone(self) -> nn.Module:
        """The teacher's backbone (``encode_with: teacher``, the default) or the student's: what ``encode`` runs and
        fine-tuning trains."""
        return self.teacher.module["backbone"] if self.cfg.encode_with == "teacher" else self.backbone

    @torch.no_grad()
    def teacher_scores(self, views: Tensor) -> Tensor:
        """Unmasked global views (V*B, C, S, S) -> teacher head scores (V*B, 1 + N, K)."""
        t = self.teacher.module
        return t["head"](t["backbone"]["encoder"](t["backbone"]["adapter"].embed(views)).x).float()

    def forward(self, batch: Batch) -> ObjectiveOutput:
        if batch.views is None:
            raise ValueError("iBOT needs multi-view batches: set data.views.enabled: true")
        views, mask = batch.views.global_, batch.views.mask  # (B, V, C, S, S), (B, V, N) bool
        b, v = views.shape[:2]
        x = views.transpose(0, 1).flatten(0, 1)  # (B, V, C, S, S) -> (V*B, C, S, S), view-major
        m = mask.transpose(0, 1).flatten(0, 1)  # (B, V, N) -> (V*B, N)
        freeze = self.training and self.num_updates < self.cfg.freeze_last_layer_steps

        t = self.teacher_scores(x)  # (V*B, 1 + N, K)
        s = self.head(self.encoder(self.adapter.embed(x, mask=m)).x, freeze).float()  # (V*B, 1 + N, K)
        s_cls = [s[:, 0]]  # crops' cls scores, (V*B, K) then L*B rows per local batch
        if batch.views.local is not None:
            loc = batch.views.local.transpose(0, 1).flatten(0, 1)  # (B, L, C, s, s) -> (L*B, C, s, s)
            h = self.encoder(self.adapter.embed(loc)).x[:, 0]  # (L*B, D) cls only; positions follow the crop size
            s_cls.append(self.head(h, freeze).float())  # (L*B, K)

        tt, st = teacher_temp_at(self.cfg, self.num_updates), self.cfg.student_temp
        t_cls = F.softmax((t[:, 0] - self.center) / tt, dim=-1).chunk(v)  # V x (B, K)
        t_patch = F.softmax((t[:, 1:] - self.center_patch) / tt, dim=-1).chunk(v)  # V x (B, N, K)
        s_all = torch.cat(s_cls)  # ((V + L) * B, K)
        s_cls_log = F.log_softmax(s_all / st, dim=-1).chunk(s_all.shape[0] // b)  # (V + L) x (B, K)
        s_patch_log = F.log_softmax(s[:, 1:] / st, dim=-1).chunk(v)  # V x (B, N, K)
        m_views = m.chunk(v)  # V x (B, N)

        cls_terms, patch_terms = [], []
        for q in range(v):
            for w, s_log in enumerate(s_cls_log):
                if w == q:  # same view: masked patch self-distillation
                    ce = -(t_patch[q] * s_patch_log[w]).sum(-1)  # (B, N)
                    mw = m_views[w].to(ce.dtype)
                    patch_terms.append(((ce * mw).sum(-1) / mw.sum(-1).clamp_min(1.0)).mean())
                else:  # cross-view cls self-distillation
                    cls_terms.append(-(t_cls[q] * s_log).sum(-1).mean())
        cls_loss = torch.stack(cls_terms).mean() if cls_terms else s.new_zeros(())
        patch_loss = torch.stack(patch_terms).mean()
        loss = self.cfg.cls_weight * cls_loss + self.cfg.patch_weight * patch_loss

        with torch.no_grad():
            if self.training:
                self.update_centers(t)
            p_t = torch.cat(t_cls)  # (V*B, K)
            p_s = torch.cat(s_cls_log).exp()  # ((V+L)*B, K)
            stats = {"teacher_entropy": entropy(p_t.mean(0)), "student_entropy": entropy(p_s.mean(0)),
                     "teacher_sample_entropy": entropy(p_t).mean(),
                     "student_sample_entropy": entropy(p_s).mean()}  # () each, on the device
        if self.training and self.cfg.min_entropy > 0 and self.num_updates >= self.cfg.collapse_after:
            self.check_entropy(stats)
        logs = {"cls_loss": cls_loss.detach(), "patch_loss": patch_loss.detach(),
                "teacher_temp": tt, "mask_ratio": m.float().mean(), **stats}
        return ObjectiveOutput(loss=loss, logs=logs)

    @torch.no_grad()
    def update_centers(self, t: Tensor) -> None:
        """EMA of the teacher's batch-mean cls and patch scores (averaged over processes when distributed)."""
        cls_mean = t[:, 0].mean(0, keepdim=True)  # (V*B, K) -> (1, K)
        patch_mean = t[:, 1:].mean((0, 1)).view(1, 1, -1)  # (V*B, N, K) -> (1, 1, K)
        if dist.is_available() and dist.is_initialized():
            for x in (cls_mean, patch_mean):
                dist.all_reduce(x)
                x /= dist.get_world_size()
        mom = self.cfg.center_momentum
        self.center.mul_(mom).add_(cls_mean, alpha=1 - mom)
        self.center_patch.mul_(mom).add_(patch_mean, alpha=1 - mom)

    def check_entropy(self, stats: dict[str, float | Tensor]) -> None:
        watched = {k: float(stats[k]) for k in ("teacher_entropy", "student_entropy")}  # read on the host here only
        low = {k: v for k, v in watched.items() if v < self.cfg.min_entropy}
        if low:
            detail = ", ".join(f"{k}={val:.4g}" for k, val in low.items())
            raise CollapseError(
                f"iBOT collapse at step {self.num_updates}: batch-mean entropy below method.min_entropy="
                f"{self.cfg.min_entropy:.4g} nats ({detail}; uniform would be {math.log(self.cfg.head.out_dim):.3g}): "
                "the outputs concentrate on a few prototypes. Lower the learning rate, lengthen the teacher "
                "temperature warm-up, raise the EMA momentum or use a larger batch."
            )

    def update_teacher(self, step: int) -> dict[str, float]:
        self.num_updates = step
        return {"ema_decay": self.teacher.update(self, step)}


def _check(cfg: Any) -> None:
    require(cfg.data.views.enabled, "iBOT needs multi-view examples: set data.views.enabled: true")
    require(cfg.adapter.cls_token, "iBOT needs an adapter with a cls token (adapter.cls_token: true)")
    local = cfg.data.views
    require(not local.local_views or cfg.adapter.positions != "relative",
            "iBOT's local crops need absolute positions (adapter.positions: learned or sincos)")


IBOT_SPEC = ObjectiveSpec(
    config=IBOTConfig,
    build=vit_objective(IBOT),
    modalities=("image",),
    check=_check,
    tiny=("data.views.local_size=8", "data.views.local_views=2", "method.head.hidden=32", "method.head.bottleneck=16",
          "method.head.out_dim=64", "train.accumulate=1"),
    logs=frozenset({"cls_loss", "patch_loss", "teacher_entropy", "student_entropy", "teacher_temp", "ema_decay"}),
)
