"""The fine-tuned model: the backbone that ``encode`` runs, and a task head on its tokens.

classification: encode -> pool (mean of the non-prefix tokens, cls, or token 0) -> ``fc_norm`` -> dropout
    [-> dense -> tanh -> dropout: ``head_dense``, RoBERTa's ``RobertaClassificationHead``] -> linear head -> (B, C)
    logits; cross-entropy with label smoothing, or the soft targets of timm's ``Mixup`` (mixup / cutmix).
    With ``fc_norm`` the pooled features are those of the last block before the encoder's final norm
    (``encode(layers=[-1])``), as MAE's ``--global_pool`` and BEiT's ``use_mean_pooling`` drop that norm
    (facebookresearch/mae ``models_vit.py``; microsoft/unilm beit ``modeling_finetune.py``); timm's
    ``VisionTransformer`` with ``global_pool='avg'`` is the same model.
ctc: encode -> the non-prefix tokens -> dropout -> linear head -> (B, N, V) log-probabilities; CTC loss (Graves et
    al. 2006; ``torch.nn.functional.ctc_loss``, blank 0), as wav2vec 2.0 / data2vec fine-tune for speech recognition.

Freezing (wav2vec 2.0 §4.2 / data2vec §4 speech fine-tuning; fairseq ``feature_grad_mult: 0.0`` and
``freeze_finetune_updates``): the parameters under the task's ``frozen`` prefixes never train (``requires_grad``
off, so the layer-decay optimizer leaves them out), and for the first ``freeze_encoder_steps`` optimizer steps the
backbone runs under ``torch.no_grad`` so that only the head moves. The steps done are a buffer of the model (saved
with its checkpoint, advanced by the loop's ``update_teacher(step)`` hook), so a resumed fine-tune freezes as an
uninterrupted one.

Only ``encode`` of the objective is called (``unimim.objectives.base``: the evaluation contract), and only the
parameters of the module it runs (``backbone``, a child of this model) are trained and saved: not a teacher copy
that is not encoded with, not a decoder or the head of the pretraining objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimim.core.batch import LABEL_PAD, Batch
from unimim.eval.features import pool_tokens
from unimim.eval.finetune.config import FinetuneConfig
from unimim.eval.task import TaskKind
from unimim.objectives.base import ObjectiveOutput

Encode = Callable[..., Tensor]  # encode(inputs, padding_mask=None, layers=None) -> (B, T, D)
TokenPadding = Callable[[Tensor | None, int], Tensor | None]


def init_head(head: nn.Linear, std: float, scale: float = 1.0) -> None:
    """Head weight ~ normal(0, std) truncated to [-2, 2] (timm's ``trunc_normal_``) x ``scale``, bias 0: MAE
    ``main_finetune.py`` (std 2e-5); BEiT ``modeling_finetune.py`` (std 0.02, then weight and bias x ``init_scale``
    0.001)."""
    nn.init.trunc_normal_(head.weight, std=std, a=-2.0, b=2.0)
    with torch.no_grad():
        head.weight.mul_(scale)
    nn.init.zeros_(head.bias)


class FinetuneModel(nn.Module):
    """``model(batch) -> ObjectiveOutput(loss)`` for the training loop; :meth:`logits` for evaluation.

    Args:
        backbone: the module holding every weight ``encode`` uses; made trainable.
        encode: the objective's ``encode`` (it runs ``backbone``).
        kind: ``classification`` or ``ctc``.
        num_classes: C classes, or the V-symbol output vocabulary (ctc, blank 0).
        dim: D, the width of the encoded tokens.
        num_prefix_tokens: P, tokens before the patches / frames / text tokens (cls).
        num_layers: blocks ``encode(layers=...)`` selects from (0: none; ``fc_norm`` then normalises the final
            output).
        cfg: the fine-tune settings (pooling, fc_norm, head, label smoothing, mixup).
        token_padding: the task's input padding -> token padding (see :class:`~unimim.eval.task.LabelledTask`).
        norm_eps: epsilon of ``fc_norm``.
        frozen: parameter-name prefixes of ``backbone`` that never train (each must match a parameter).
        freeze_encoder_steps: optimizer steps during which the backbone is frozen (only the head trains).
    """

    def __init__(self, backbone: nn.Module, encode: Encode, *, kind: TaskKind, num_classes: int, dim: int,
                 num_prefix_tokens: int, num_layers: int, cfg: FinetuneConfig,
                 token_padding: TokenPadding | None = None, norm_eps: float = 1e-6,
                 frozen: Sequence[str] = (), freeze_encoder_steps: int = 0) -> None:
        super().__init__()
        if kind not in ("classification", "ctc"):
            raise ValueError(f"unknown task kind {kind!r} (classification | ctc)")
        if num_classes < 2:
            raise ValueError(f"a task needs at least 2 classes / output symbols, got {num_classes}")
        if kind == "classification" and cfg.pool == "cls" and num_prefix_tokens < 1:
            raise ValueError("finetune.pool=cls needs a cls token, and this encoder has none: use finetune.pool=mean")
        if freeze_encoder_steps < 0:
            raise ValueError(f"freeze_encoder_steps must be >= 0, got {freeze_encoder_steps}")
        self.backbone = backbone.requires_grad_(True)
        self.frozen = tuple(frozen)
        names = [n for n, _ in backbone.named_parameters()]
        unmatched = [f for f in self.frozen if not any(n.startswith(f) for n in names)]
        if unmatched:
            heads = sorted({n.split(".")[0] + "." for n in names})
            raise ValueError(f"frozen parameter prefixes {unmatched} match no parameter of the backbone (its names "
                             f"start with {', '.join(heads)}; e.g. adapter.feature_encoder.)")
        for n, p in backbone.named_parameters():
            if n.startswith(self.frozen):
                p.requires_grad_(False)
        self.freeze_encoder_steps = freeze_encoder_steps
        if freeze_encoder_steps:  # optimizer steps done (a buffer: checkpointed with the model)
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.kind = kind
        self.cfg = cfg
        self.num_prefix_tokens = num_prefix_tokens
        self.token_padding = token_padding
        self._encode = encode  # a bound method, not a module: its weights are those of ``backbone``
        # features before the encoder's final norm when fc_norm replaces it (where encode can select blocks)
        self._layers = [-1] if (kind == "classification" and cfg.fc_norm and num_layers > 0) else None
        use_norm = kind == "classification" and cfg.fc_norm
        self.fc_norm = nn.LayerNorm(dim, eps=norm_eps) if use_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head_dense = None
        if kind == "classification" and cfg.head_dense:
            self.head_dense = nn.Linear(dim, dim)
            init_head(self.head_dense, cfg.head_init_std)
        self.head = nn.Linear(dim, num_classes)
        init_head(self.head, cfg.head_init_std, cfg.head_init_scale)
        self.mixup = None
        if kind == "classification" and cfg.uses_mixup:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
                               num_classes=num_classes)

    @property
    def encoder_frozen(self) -> bool:
        """True while the backbone is frozen (the first ``freeze_encoder_steps`` optimizer steps)."""
        return bool(self.freeze_encoder_steps) and int(self.steps_done) < self.freeze_encoder_steps

    def tokens(self, batch: Batch) -> Tensor:
        """The encoded tokens (B, T, D) of the batch's inputs (with the training mask of a ctc task applied); no
        gradient reaches the backbone while it is frozen."""
        if self.training and self.encoder_frozen:
            with torch.no_grad():
                return self._tokens(batch)
        return self._tokens(batch)

    def _tokens(self, batch: Batch) -> Tensor:
        if self.training and batch.mask is not None:  # wav2vec 2.0 / data2vec CTC fine-tuning masks its input
            return self._masked_tokens(batch)
        return self._encode(batch.inputs, batch.padding_mask, self._layers)

    def _masked_tokens(self, batch: Batch) -> Tensor:
        if not (isinstance(self.backbone, nn.ModuleDict) and {"adapter", "encoder"} <= set(self.backbone)):
            raise ValueError("the task masks its training input, which needs an adapter + encoder backbone")
        mask = batch.single_mask("fine-tuning")  # (B, N)
        adapter, encoder = self.backbone["adapter"], self.backbone["encoder"]
        return encoder(adapter.embed(batch.inputs, mask=mask, padding_mask=batch.padding_mask)).x

    def _token_padding(self, batch: Batch, n: int) -> Tensor | None:
        """(B, N) padding of the N non-prefix tokens, or None."""
        if batch.padding_mask is None:
            return None
        if self.token_padding is not None:
            return self.token_padding(batch.padding_mask, n)
        return batch.padding_mask  # (B, N) or (B, P + N): the input padding is the token padding (text)

    def logits(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """classification: (B, C) logits and None; ctc: (B, N, V) logits and their (B,) lengths (or None)."""
        x = self.tokens(batch)  # (B, T, D)
        p = self.num_prefix_tokens
        if self.kind == "classification":
            if self.cfg.pool == "first":
                pooled = x[:, 0]  # (B, T, D) -> (B, D): token 0 (<s>), prefix or not
            else:
                pooled = pool_tokens(x, pool=self.cfg.pool, num_prefix_tokens=p,
                                     padding_mask=self._token_padding(batch, x.shape[1] - p))  # (B, D)
            return self.classify(pooled), None
        body = x[:, p:]  # (B, T, D) -> (B, N, D)
        pad = self._token_padding(batch, body.shape[1])
        if pad is not None and pad.shape[1] != body.shape[1]:
            pad = pad[:, p:]  # (B, P + N) -> (B, N)
        lengths = None if pad is None else (~pad.bool()).sum(dim=1)  # (B,)
        return self.head(self.head_drop(body)), lengths

    def classify(self, pooled: Tensor) -> Tensor:
        """(B, D) pooled features -> (B, C) logits: fc_norm -> dropout [-> dense -> tanh -> dropout] -> head."""
        h = self.head_drop(self.fc_norm(pooled))
        if self.head_dense is not None:
            h = self.head_drop(torch.tanh(self.head_dense(h)))
        return self.head(h)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        if batch.labels is None:
            raise ValueError("fine-tuning needs labelled batches (Batch.labels); the task's collate gave none")
        if self.kind == "ctc":
            return ObjectiveOutput(self.ctc_loss(batch))
        labels = batch.labels
        if self.training and self.mixup is not None:
            if batch.inputs.dim() != 4:
                raise ValueError("mixup / cutmix mix images (B, C, H, W); set finetune.mixup=0 finetune.cutmix=0 "
                                 f"for inputs of shape {tuple(batch.inputs.shape)}")
            inputs, soft = self.mixup(batch.inputs, labels)  # (B, C, H, W), (B, classes) soft targets
            logits, _ = self.logits(Batch(inputs=inputs, padding_mask=batch.padding_mask, labels=labels))
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            return ObjectiveOutput(loss)
        logits, _ = self.logits(batch)
        smoothing = self.cfg.label_smoothing if self.training else 0.0
        return ObjectiveOutput(F.cross_entropy(logits.float(), labels, label_smoothing=smoothing))

    def ctc_loss(self, batch: Batch) -> Tensor:
        """CTC loss of (B, S) targets padded with ``LABEL_PAD`` (mean over the batch of the per-target-length loss;
        infinite losses of too-short inputs are zeroed, as fairseq's ``zero_infinity``)."""
        logits, lengths = self.logits(batch)  # (B, N, V)
        b, n, _ = logits.shape
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (B, N, V) -> (N, B, V)
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long, device=logits.device)
        targets = batch.labels
        target_lengths = (targets != LABEL_PAD).sum(dim=-1)  # (B,)
        return F.ctc_loss(log_probs, targets.clamp(min=0), lengths, target_lengths, blank=0, reduction="mean",
                          zero_infinity=True)

    def update_teacher(self, step: int) -> dict[str, float]:
        """The training loop's hook after optimizer step ``step`` (1-based): no teacher here; it counts the steps
        done for ``freeze_encoder_steps``."""
        if self.freeze_encoder_steps:
            self.steps_done.fill_(step)
        return {}
