"""A labelled task as fine-tuning and the probes see it: two datasets, their collate, and what the labels mean.

Each modality builds its tasks from the experiment config's ``task`` section (``ModalitySpec.build_task``): where
the labelled data lies (a folder of class folders, TSV / CSV / JSONL files, a fairseq manifest with transcripts),
which split is the test split, and the training-time augmentation. Nothing here knows a modality.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor
from torch.utils.data import Dataset

from unimim.core.batch import Batch

TaskKind = Literal["classification", "ctc"]


@dataclass
class LabelledTask:
    """A labelled task of one modality.

    Attributes:
        name: its directory under ``RUN_DIR/finetune/`` (e.g. ``fashion_mnist``, ``keywords``, ``sst2``).
        kind: ``classification`` (``Batch.labels`` (B,) class ids; a head on pooled tokens) or ``ctc`` (``labels``
            (B, S) target ids padded with ``LABEL_PAD``; a per-token head trained with CTC).
        train / test: datasets whose items ``collate`` turns into a :class:`~unimim.core.batch.Batch` with
            ``labels``; ``train`` carries the training-time augmentation when it was asked for.
        collate: list of items -> Batch (inputs, padding_mask, labels; a ``mask`` where the task masks its
            training input, e.g. wav2vec 2.0 / data2vec CTC fine-tuning).
        classes: the class names (classification), or the output vocabulary (ctc: index 0 is the CTC blank).
        collate_eval: the collate of evaluation batches when it differs from ``collate`` (no masks), else None.
        token_padding: ``(batch.padding_mask (B, *X) or None, N) -> (B, N) bool or None``, the padding of the N
            non-prefix tokens that ``encode`` returns for an input-level padding mask (speech: frames of the conv
            feature encoder, for pooling and CTC lengths); None where the input padding already is the token
            padding (text) or nothing is padded (images).
        frozen: parameter-name prefixes, relative to the objective's ``encoding_backbone()`` (``adapter.*``,
            ``encoder.*``), that fine-tuning never trains (speech: ``adapter.feature_encoder.``, the conv feature
            encoder, as wav2vec 2.0 / data2vec's ``feature_grad_mult: 0.0``).
        freeze_encoder_steps: optimizer steps at the start of fine-tuning during which the whole backbone is frozen
            and only the head trains (wav2vec 2.0 / data2vec ``freeze_finetune_updates``).
    """

    name: str
    kind: TaskKind
    train: Dataset
    test: Dataset
    collate: Callable[[list[Any]], Batch]
    classes: Sequence[str]
    collate_eval: Callable[[list[Any]], Batch] | None = None
    token_padding: Callable[[Tensor | None, int], Tensor | None] | None = None
    frozen: Sequence[str] = ()
    freeze_encoder_steps: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def eval_collate(self) -> Callable[[list[Any]], Batch]:
        return self.collate_eval if self.collate_eval is not None else self.collate
