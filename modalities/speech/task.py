"""The labelled speech tasks of fine-tuning and the probes: the recipe's ``task`` section and its builder.

* ``kind: keywords`` -- utterance classification (a head on pooled frames): the keyword probe set (fairseq TSV +
  ``.wrd`` labels, ``format: manifest``; by default the data section's ``eval_train_manifest`` /
  ``eval_test_manifest``, what the probes read) or a folder of audio files per class (``format: folder``:
  ``root/train/<class>/*.wav|flac|ogg`` and ``root/<test_split>/<class>/...``, no manifest step). Clips keep their
  own length (padded in the batch; ``token_padding`` gives the padded frames so pooling ignores them), cropped to
  ``max_samples`` (by default ``data.eval_clip_samples``) when longer.
* ``kind: ctc`` -- speech recognition with CTC over fairseq's letter vocabulary (:class:`~unimim.eval.ctc.LetterVocab`,
  blank at index 0), from a fairseq manifest with its ``.ltr`` (or ``.wrd``) transcripts, as the data2vec /
  wav2vec 2.0 protocol (fairseq examples/wav2vec/config/finetuning/base_10h.yaml, run with
  ``common.user_dir=examples/data2vec``; shared/reference/data2vec.md §2): time masks kept on during fine-tuning
  (``mask_prob`` 0.65, ``mask_length`` 10 frames, drawn by the training collate into ``Batch.mask``; none at
  evaluation), the conv feature encoder frozen (``frozen``: fairseq ``feature_grad_mult: 0.0``), the whole encoder
  frozen for the first ``freeze_encoder_steps`` updates (``freeze_finetune_updates``), greedy decoding, WER / CER.

The task hands the fine-tuning core, in its :class:`~unimim.eval.task.LabelledTask`, ``frozen`` (parameter-name
prefixes, relative to the backbone ``adapter.* / encoder.*``, that never train) and ``freeze_encoder_steps``
(updates during which only the head trains). Audio is normalised as in pretraining (``data.normalize``: fairseq
refuses to fine-tune with another setting) and bounded by ``data.max_file_seconds``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from modalities.speech.data.class_folders import scan_split
from modalities.speech.data.dataset import MAKE_HINT, AudioDataset
from modalities.speech.data.labelled import FramePadding, LabelledAudioDataset, LabelledCollate
from modalities.speech.data.manifest import Manifest, read_manifest
from modalities.speech.data.transcripts import read_transcripts
from modalities.speech.masking import SpeechMaskConfig
from modalities.speech.model.feature_encoder import conv_output_lengths, receptive_field
from unimim.eval.ctc import LetterVocab
from unimim.eval.task import LabelledTask

logger = logging.getLogger(__name__)

CTC_MASK_PROB = 0.65  # fairseq base_10h / base_100h (model.mask_prob), mask_length 10 (Wav2Vec2AsrConfig default)


@dataclass
class SpeechTaskConfig:
    kind: Literal["keywords", "ctc"] = "keywords"   # utterance classification | CTC speech recognition (letters)
    name: str | None = None                         # RUN_DIR/finetune/<name>; None: the kind
    format: Literal["manifest", "folder"] = "manifest"  # fairseq TSV (+ .wrd / .ltr) | root/<split>/<class>/ files
    train_manifest: str | None = None               # None: keywords -- data.eval_train_manifest (the probe set)
    test_manifest: str | None = None                # None: keywords -- data.eval_test_manifest
    root: str | None = None                         # format: folder -- root/train/<class>/, root/<test_split>/<class>/
    test_split: str = "test"                        # format: folder -- the evaluation split's folder (test | val ...)
    transcripts: Literal["ltr", "wrd"] = "ltr"      # ctc: letters from TRAIN.ltr, or words of TRAIN.wrd as letters
    max_samples: int | None = None                  # keywords: longer clips cropped (None: data.eval_clip_samples);
                                                    # ctc: longer utterances left out (None: none)
    mask_prob: float | None = None                  # time masks in training (fairseq mask_prob); None: 0.65 for ctc,
                                                    # 0 (none) for keywords
    mask_length: int = 10                           # frames per span (fairseq mask_length)
    mask_min_masks: int = 1                         # spans per utterance at least (data2vec apply_mask: min_masks=1)
    # read by the fine-tuning core: parameter-name prefixes (of the backbone: adapter.*, encoder.*) that never
    # train -- the conv feature encoder, as fairseq's feature_grad_mult: 0.0 -- and the updates during which only
    # the head trains (fairseq freeze_finetune_updates)
    frozen: list[str] = field(default_factory=lambda: ["adapter.feature_encoder."])
    freeze_encoder_steps: int = 0
    limit: int | None = None                        # use only the first `limit` utterances of each split (smoke)

    def __post_init__(self) -> None:
        if self.kind not in ("keywords", "ctc"):
            raise ValueError(f"task.kind must be 'keywords' or 'ctc', got {self.kind!r}")
        if self.format not in ("manifest", "folder"):
            raise ValueError(f"task.format must be 'manifest' or 'folder', got {self.format!r}")
        if self.format == "folder" and not self.root:
            raise ValueError("task.format: folder needs task.root (root/train/<class>/*.wav, root/test/<class>/...)")
        if self.kind == "ctc" and self.format != "manifest":
            raise ValueError("task.kind: ctc reads a fairseq manifest with .ltr / .wrd transcripts (task.format: "
                             "manifest)")
        if self.kind == "ctc" and (self.train_manifest is None or self.test_manifest is None):
            raise ValueError("task.kind: ctc needs task.train_manifest and task.test_manifest (fairseq TSVs with "
                             ".ltr / .wrd transcripts beside them)")
        if not self.test_split or "/" in self.test_split or self.test_split in (".", "..", "train"):
            raise ValueError(f"task.test_split must name a split folder other than train, got {self.test_split!r}")
        if self.mask_prob is not None and not 0.0 <= self.mask_prob < 1.0:
            raise ValueError(f"task.mask_prob must be in [0, 1), got {self.mask_prob}")
        if self.mask_length < 1 or self.mask_min_masks < 0:
            raise ValueError("task.mask_length must be >= 1 and task.mask_min_masks >= 0")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"task.max_samples must be >= 1 or null, got {self.max_samples}")
        if self.freeze_encoder_steps < 0:
            raise ValueError(f"task.freeze_encoder_steps must be >= 0, got {self.freeze_encoder_steps}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"task.limit must be None or >= 1, got {self.limit}")

    @property
    def time_mask_prob(self) -> float:
        """The training masking probability: ``mask_prob``, or the kind's default."""
        if self.mask_prob is not None:
            return self.mask_prob
        return CTC_MASK_PROB if self.kind == "ctc" else 0.0

    def masking(self) -> SpeechMaskConfig | None:
        """The span masks of the training collate, or None when the task trains without masks."""
        p = self.time_mask_prob
        if p == 0.0:
            return None
        return SpeechMaskConfig(kind="span", prob=p, length=self.mask_length, min_masks=self.mask_min_masks)


def samples_for_frames(frames: int, conv_layers: Any) -> int:
    """The fewest samples from which the conv feature encoder makes ``frames`` frames (binary search)."""
    lo, hi = receptive_field(conv_layers), receptive_field(conv_layers)
    while int(conv_output_lengths(torch.tensor([hi]), conv_layers)[0]) < frames:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if int(conv_output_lengths(torch.tensor([mid]), conv_layers)[0]) >= frames:
            hi = mid
        else:
            lo = mid + 1
    return lo


def ctc_min_frames(targets: list[str]) -> int:
    """Frames a CTC alignment of ``targets`` needs: one per symbol, plus a blank between equal neighbours."""
    return len(targets) + sum(a == b for a, b in zip(targets, targets[1:]))


def _subset(manifest: Manifest, keep: list[int], labels: list[str]) -> Manifest:
    lines = manifest.line_numbers
    return Manifest(root=manifest.root, paths=[manifest.paths[i] for i in keep],
                    lengths=[manifest.lengths[i] for i in keep], labels=[labels[i] for i in keep],
                    file=manifest.file, line_numbers=None if lines is None else [lines[i] for i in keep])


def _ctc_manifest(path: str, task: SpeechTaskConfig, conv_layers: Any, min_frames: int) -> Manifest:
    """The manifest at ``path`` with its transcripts as labels (space-joined letters), leaving out (logged)
    utterances over ``task.max_samples`` and those too short for a CTC alignment of their transcript (or for a
    time mask)."""
    manifest = read_manifest(path, hint=MAKE_HINT)
    letters = read_transcripts(path, len(manifest), kind=task.transcripts, hint=MAKE_HINT)
    frames = conv_output_lengths(torch.tensor(manifest.lengths), conv_layers).tolist()
    keep, short, long = [], 0, 0
    for i, (f, tokens) in enumerate(zip(frames, letters)):
        if task.max_samples is not None and manifest.lengths[i] > task.max_samples:
            long += 1
        elif f < max(ctc_min_frames(tokens), min_frames):
            short += 1
        else:
            keep.append(i)
    if short:
        logger.warning("%s: %d of %d utterances have fewer frames than their transcript needs for a CTC alignment "
                       "(or a time mask) and were left out", path, short, len(manifest))
    if long:
        logger.info("%s: %d of %d utterances longer than task.max_samples=%d were left out", path, long,
                    len(manifest), task.max_samples)
    if not keep:
        raise ValueError(f"{path}: no utterance is left for CTC ({short} too short for their transcripts, {long} "
                         "over task.max_samples)")
    return _subset(manifest, keep, [" ".join(t) for t in letters])


def _keyword_manifests(task: SpeechTaskConfig, data: Any) -> tuple[Manifest, Manifest]:
    if task.format == "folder":
        return scan_split(task.root, "train"), scan_split(task.root, task.test_split)
    train = task.train_manifest if task.train_manifest is not None else data.eval_train_manifest
    test = task.test_manifest if task.test_manifest is not None else data.eval_test_manifest
    return read_manifest(train, labels=True, hint=MAKE_HINT), read_manifest(test, labels=True, hint=MAKE_HINT)


def build_task(task: SpeechTaskConfig, cfg: Any, train_augment: bool) -> LabelledTask:
    """The task of ``task`` with the experiment's audio settings (``cfg.data.normalize`` / ``max_file_seconds``,
    ``cfg.adapter.conv_layers``). ``train_augment`` False (probes): no random crops and no masks on either split."""
    conv = tuple(tuple(int(v) for v in c) for c in cfg.adapter.conv_layers)
    masking = task.masking() if train_augment else None
    min_frames = task.mask_length + 1 if task.masking() is not None else 1  # a row shorter cannot take a span mask
    min_samples = samples_for_frames(min_frames, conv)
    common = dict(normalize=cfg.data.normalize, limit=task.limit, max_seconds=cfg.data.max_file_seconds,
                  min_samples=min_samples, min_readable=receptive_field(conv))
    if task.kind == "ctc":
        vocab = LetterVocab()
        sets = []
        for path in (task.train_manifest, task.test_manifest):
            audio = AudioDataset(_ctc_manifest(path, task, conv, min_frames), **common)
            targets = [torch.tensor(vocab.encode_letters(t.split()), dtype=torch.long) for t in audio.labels]
            sets.append(LabelledAudioDataset(audio, targets))
        classes: tuple[str, ...] = vocab.symbols
        kind = "ctc"
    else:
        train_m, test_m = _keyword_manifests(task, cfg.data)
        crop = task.max_samples if task.max_samples is not None else cfg.data.eval_clip_samples
        classes = tuple(sorted(set(train_m.labels)))
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(test_m.labels) - set(index))
        if unknown:
            raise ValueError(f"labels {unknown} of the test split do not occur in the training split")
        sets = []
        for m, augment in ((train_m, train_augment), (test_m, False)):
            audio = AudioDataset(m, **common)
            sets.append(LabelledAudioDataset(audio, [index[w] for w in audio.labels], crop_samples=crop,
                                             random_crop=augment))
        kind = "classification"
    logger.info("speech task %s: %d train / %d test utterances, %d %s", task.name or task.kind, len(sets[0]),
                len(sets[1]), len(classes), "output symbols" if kind == "ctc" else "classes")
    return LabelledTask(
        name=task.name or task.kind, kind=kind, train=sets[0], test=sets[1],
        collate=LabelledCollate(kind, conv, masking), classes=classes,
        collate_eval=LabelledCollate(kind, conv, None) if masking is not None else None,
        token_padding=FramePadding(conv), frozen=tuple(task.frozen), freeze_encoder_steps=task.freeze_encoder_steps,
    )
