"""The ``finetune`` section of an experiment config: how the pretrained encoder (and its from-scratch twin) is
fine-tuned on a labelled task of its modality.

Defaults follow MAE's ViT-B fine-tuning (He et al. 2022, appendix A.2; facebookresearch/mae ``main_finetune.py``,
``util/lr_decay.py``): AdamW, base lr 5e-4 x batch / 256, layer-wise lr decay 0.65, weight decay 0.05, drop path 0.1,
label smoothing 0.1, mean pooling + ``fc_norm``, head weights ~ truncated normal with std 2e-5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unimim.train.optim import OptimConfig


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """:class:`~unimim.train.optim.OptimConfig` with MAE's fine-tuning defaults (no gradient clipping)."""

    base_lr: float | None = 5e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0          # finetune.warmup_epochs, when set, replaces it
    weight_decay: float = 0.05
    clip_grad: float | None = None


@dataclass
class FinetuneConfig:
    baseline: bool = True          # also fine-tune the same architecture from random initialisation (from scratch)
    epochs: float = 10.0           # length in passes over the task's training split ...
    steps: int | None = None       # ... or, when set, in optimizer steps (replaces epochs)
    warmup_epochs: float | None = None  # linear warm-up in epochs (replaces optim.warmup_steps when set)
    batch_size: int = 64           # micro-batch
    accumulate: int = 1            # micro-batches per optimizer step
    eval_batch_size: int = 256
    seed: int = 0                  # the same for both inits: same head init, same data order, same augmentation
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    # lr of a parameter = lr x layer_decay^(L + 1 - layer_id): embeddings 0, block i -> i + 1, final norm / head
    # L + 1 (MAE util/lr_decay.py param_groups_lrd; BEiT / data2vec: 0.65 for ViT-B); 1.0 switches it off
    layer_decay: float = 0.65
    drop_path: float = 0.1         # replaces encoder.drop_path in the fine-tuned model
    dropout: float | None = None   # replaces encoder.dropout when set (None: the run's)
    attn_dropout: float | None = None  # replaces encoder.attn_dropout when set (None: the run's)
    # classification: mean of the non-prefix tokens, the cls token, or token 0 whatever the prefix count (RoBERTa's
    # <s>: the text adapter has no prefix token)
    pool: Literal["mean", "cls", "first"] = "mean"
    fc_norm: bool = True           # LayerNorm on the pooled features; the encoder's final norm is then skipped (MAE
                                   # --global_pool, BEiT / data2vec use_mean_pooling; timm's fc_norm)
    head_dropout: float = 0.0      # dropout before the head (timm drop_rate)
    # a pre-head dense -> tanh -> dropout(head_dropout) layer of width D (RoBERTa's RobertaClassificationHead:
    # dropout -> dense -> tanh -> dropout -> out_proj); its weight ~ truncated normal(head_init_std), bias 0
    head_dense: bool = False
    head_init_std: float = 2e-5    # head weight ~ truncated normal(std) x head_init_scale, bias 0: MAE std 2e-5;
    head_init_scale: float = 1.0   # BEiT / data2vec: std 0.02 x init_scale 0.001
    label_smoothing: float = 0.1
    # timm.data.Mixup: mixup / cutmix alpha (0 = off), the probability of mixing a batch and of cutmix over mixup
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"finetune.epochs must be > 0, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"finetune.steps must be >= 1, got {self.steps}")
        if self.warmup_epochs is not None and not self.warmup_epochs >= 0:
            raise ValueError(f"finetune.warmup_epochs must be >= 0 or null, got {self.warmup_epochs}")
        for name in ("batch_size", "accumulate", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"finetune.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"finetune.layer_decay must lie in (0, 1] (1 = off), got {self.layer_decay}")
        for name in ("drop_path", "head_dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"finetune.{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("dropout", "attn_dropout"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                raise ValueError(f"finetune.{name} must lie in [0, 1) or be null (the run's), got "
                                 f"{getattr(self, name)}")
        if self.pool not in ("mean", "cls", "first"):
            raise ValueError(f"finetune.pool must be mean, cls or first, got {self.pool!r}")
        if not (self.head_init_std > 0 and self.head_init_scale > 0):
            raise ValueError("finetune.head_init_std and finetune.head_init_scale must be > 0")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"finetune.mixup and finetune.cutmix are Beta alphas >= 0 (0 = off), got {self.mixup} "
                             f"and {self.cutmix}")
        for name in ("mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"finetune.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.uses_mixup and self.batch_size % 2:
            raise ValueError(f"mixup / cutmix pair each example with the batch flipped: finetune.batch_size must be "
                             f"even, got {self.batch_size}")

    @property
    def uses_mixup(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulate

    def schedule(self, num_train: int) -> tuple[int, int]:
        """(optimizer steps, warm-up steps) for a training split of ``num_train`` examples."""
        per_epoch = num_train // self.effective_batch
        if per_epoch == 0 and self.steps is None:
            raise ValueError(f"the task's training split has {num_train} examples, fewer than one batch of "
                             f"{self.effective_batch} (finetune.batch_size x finetune.accumulate)")
        steps = self.steps if self.steps is not None else max(1, round(self.epochs * per_epoch))
        warmup = self.optim.warmup_steps if self.warmup_epochs is None else round(self.warmup_epochs * per_epoch)
        return steps, min(warmup, steps)
