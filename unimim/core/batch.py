"""The training batch: one typed structure with named fields and one meaning per axis.

Every modality's collate returns a :class:`Batch`; every objective's ``forward`` takes one. Shape letters: B
examples, R masks per example, V global views, L local views, N maskable tokens (patches / frames / token ids,
prefix tokens excluded), C channels, S pixels or samples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

LABEL_PAD = -100  # padding of (B, S) label sequences (the ignore_index of torch's cross-entropy)


@dataclass
class Views:
    """Multi-view examples (self-distillation, iBOT): augmented global views with their own masks, local crops.

    Attributes:
        global_: (B, V, C, S, S) global views; the teacher sees them as they are, the student with ``mask`` applied.
        mask: (B, V, N) bool, one mask per global view (``True`` = masked; a view may have none masked).
        local: (B, L, C, s, s) unmasked local crops, or ``None``.
    """

    global_: Tensor
    mask: Tensor
    local: Tensor | None = None

    def __post_init__(self) -> None:
        if self.global_.dim() != 5 or self.mask.dim() != 3 or self.mask.shape[:2] != self.global_.shape[:2]:
            raise ValueError(f"views need global (B, V, C, S, S) and mask (B, V, N), got {tuple(self.global_.shape)} "
                             f"and {tuple(self.mask.shape)}")
        if self.local is not None and self.local.dim() != 5:
            raise ValueError(f"local views must be (B, L, C, s, s), got {tuple(self.local.shape)}")


@dataclass
class Batch:
    """One batch of pretraining examples.

    Attributes:
        inputs: (B, *X) raw input, one per example: images (B, C, S, S), waveforms (B, S), token ids (B, N).
            ``None`` only for multi-view batches (``views``).
        mask: (B, R, N) bool, ``True`` = masked: R masks per example share one teacher pass (data2vec 2.0
            multi-mask; R = 1 otherwise). A (B, N) mask given at construction becomes (B, 1, N).
        padding_mask: (B, *X) bool, input-level padding (``True`` = padding), or ``None`` when nothing is padded.
        student_inputs: (B, R, N) the input corrupted by the masking itself (BERT's 80/10/10 on token ids), one per
            mask, or ``None``; the teacher always sees the clean ``inputs``.
        views: multi-view examples (:class:`Views`), or ``None``.
        labels: supervised targets of a labelled task (fine-tuning, probes), or ``None`` in pretraining: (B,) int64
            class ids (classification), or (B, S) int64 target ids right-padded with ``LABEL_PAD`` (CTC; the target
            lengths are ``(labels != LABEL_PAD).sum(-1)``).
        skipped: examples of this batch whose own input was unreadable and was replaced by the next readable one
            (counted in the metrics). A function of the data alone: one per bad input and epoch, whatever the
            number of DataLoader workers.
    """

    inputs: Tensor | None
    mask: Tensor | None = None
    padding_mask: Tensor | None = None
    student_inputs: Tensor | None = None
    views: Views | None = None
    labels: Tensor | None = None
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.mask is not None and self.mask.dim() == 2:
            self.mask = self.mask.unsqueeze(1)  # (B, N) -> (B, 1, N)
        if self.student_inputs is not None and self.student_inputs.dim() == 2:
            self.student_inputs = self.student_inputs.unsqueeze(1)  # (B, N) -> (B, 1, N)
        if self.mask is not None and (self.mask.dim() != 3 or self.mask.dtype != torch.bool):
            raise ValueError(f"batch.mask must be (B, R, N) or (B, N) bool, got {tuple(self.mask.shape)} "
                             f"{self.mask.dtype}")
        if self.inputs is None and self.views is None:
            raise ValueError("a batch needs inputs or views")

    @property
    def size(self) -> int:
        """B, the number of examples."""
        return (self.inputs if self.inputs is not None else self.views.global_).shape[0]

    @property
    def num_masks(self) -> int:
        """R, masks per example (0 without a mask)."""
        return 0 if self.mask is None else self.mask.shape[1]

    def single_mask(self, objective: str) -> Tensor:
        """The (B, N) mask of an objective that takes one mask per example; a clear error otherwise."""
        if self.mask is None:
            raise ValueError(f"{objective} needs a mask in the batch")
        if self.mask.shape[1] != 1:
            raise ValueError(f"{objective} takes one mask per example, got {self.mask.shape[1]} "
                             "(set masking.num_masks: 1)")
        return self.mask[:, 0]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """A copy with every tensor on ``device``."""
        def move(v):
            if torch.is_tensor(v):
                return v.to(device, non_blocking=non_blocking)
            if isinstance(v, Views):
                return Views(move(v.global_), move(v.mask), move(v.local))
            return v

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})
