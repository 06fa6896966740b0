"""Labelled utterances for fine-tuning: the datasets of a speech task and the collate that makes their batches.

* :class:`LabelledAudioDataset` -- items ``(float32 (S,) waveform, target)``: an int class id (keywords), or an
  int64 (L,) tensor of letter ids (CTC). Utterances keep their own length (a keyword clip longer than
  ``crop_samples`` is cropped: centred, or at a random offset when augmenting); unreadable files are skipped and
  replaced by the next readable one, as in pretraining (:class:`~modalities.speech.data.dataset.AudioDataset`).
* :class:`LabelledCollate` -- items -> :class:`~unimim.core.batch.Batch`: waveforms right-padded to the longest
  with a sample-level ``padding_mask`` (None when nothing is padded), ``labels`` (B,) class ids or (B, L_max)
  letter ids right-padded with ``LABEL_PAD``, and, for the training collate of a masked task, ``mask`` (B, N)
  time masks drawn on each row's own frames (padded frames never masked), span masks with fairseq
  ``compute_mask_indices`` semantics and equal counts across the batch (``require_same_masks``, as data2vec's
  ``apply_mask`` during fine-tuning: fairseq examples/data2vec/models/data2vec_audio.py ``apply_mask``,
  ``min_masks=1``). The evaluation collate draws no mask.
* :class:`FramePadding` -- the task's ``token_padding``: the frame padding of the conv feature encoder's N output
  frames for a sample-level padding mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from modalities.speech.data.dataset import AudioDataset
from modalities.speech.masking import SpeechMaskConfig, SpeechMaskGenerator, equalise_counts
from modalities.speech.model.feature_encoder import conv_output_lengths, frame_padding_mask
from unimim.core.batch import LABEL_PAD, Batch

ConvLayers = tuple[tuple[int, int, int], ...]


class LabelledAudioDataset(Dataset):
    """Utterances of an :class:`AudioDataset` with one target each: ``targets[i]`` for entry ``i`` of the audio
    set (an int, or an (L,) int64 tensor). Items ``(waveform (S',) float32, target)``, ``S' <= crop_samples``."""

    def __init__(self, audio: AudioDataset, targets: Sequence[Any], *, crop_samples: int | None = None,
                 random_crop: bool = False) -> None:
        if len(targets) != len(audio):
            raise ValueError(f"{len(targets)} targets for {len(audio)} utterances")
        self.audio = audio
        self.targets = list(targets)
        self.crop_samples = crop_samples
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        wave, j = self.audio.read(index)
        n = self.crop_samples
        if n is not None and wave.shape[0] > n:
            if self.random_crop:  # torch's generator: seeded per DataLoader worker
                start = int(torch.randint(0, wave.shape[0] - n + 1, ()))
            else:
                start = (wave.shape[0] - n) // 2
            wave = wave[start : start + n]
        return torch.from_numpy(np.ascontiguousarray(wave)), self.targets[j]

    @property
    def num_skipped(self) -> int:
        return self.audio.num_skipped


@dataclass(frozen=True)
class FramePadding:
    """``(padding_mask (B, S) bool | None, N) -> (B, N) bool | None``: frame t of a row is padding iff
    t >= conv_output_lengths(real samples of the row) (:func:`frame_padding_mask`)."""

    conv_layers: ConvLayers

    def __call__(self, padding_mask: Tensor | None, num_tokens: int) -> Tensor | None:
        if padding_mask is None:
            return None
        return frame_padding_mask(padding_mask, num_tokens, self.conv_layers)


@dataclass(frozen=True)
class LabelledCollate:
    """Items ``(waveform (S_i,), target)`` -> Batch(inputs (B, S), padding_mask (B, S) | None, labels, mask).

    kind: ``classification`` (labels (B,) int64) or ``ctc`` (labels (B, L_max) int64, ``LABEL_PAD`` after each
    row's targets). masking: the time masks of training (span masks of ``masking.length`` frames, ``prob`` as
    fairseq's ``mask_prob``), or None (evaluation, or a task trained without masks). Masks come from a numpy
    generator seeded from torch's, so a seeded DataLoader gives the same masks again.
    """

    kind: Literal["classification", "ctc"]
    conv_layers: ConvLayers
    masking: SpeechMaskConfig | None = None

    def __call__(self, items: list[tuple[Tensor, Any]]) -> Batch:
        if not items:
            raise ValueError("cannot collate an empty batch")
        waves = [w for w, _ in items]
        lengths = torch.tensor([w.shape[0] for w in waves])  # (B,)
        s = int(lengths.max())
        inputs = torch.zeros(len(waves), s)
        for i, w in enumerate(waves):
            inputs[i, : w.shape[0]] = w  # right padding
        padding = None
        if int(lengths.min()) < s:
            padding = torch.arange(s)[None, :] >= lengths[:, None]  # (B, S)
        mask = None
        if self.masking is not None:
            mask = self.draw_masks(conv_output_lengths(lengths, self.conv_layers), s)
        return Batch(inputs=inputs, padding_mask=padding, mask=mask, labels=self.labels([t for _, t in items]))

    def labels(self, targets: list[Any]) -> Tensor:
        if self.kind == "classification":
            return torch.tensor([int(t) for t in targets], dtype=torch.long)  # (B,)
        width = max(len(t) for t in targets)
        out = torch.full((len(targets), width), LABEL_PAD, dtype=torch.long)  # (B, L_max)
        for i, t in enumerate(targets):
            out[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        return out

    def draw_masks(self, frames: Tensor, samples: int) -> Tensor:
        """Span masks of each row's own ``frames[b]`` frames, equal counts: (B, N) bool, N = frames of ``samples``."""
        n = int(conv_output_lengths(torch.tensor([samples]), self.conv_layers)[0])
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        generator = SpeechMaskGenerator(self.masking)
        masks = np.zeros((len(frames), n), dtype=bool)
        for i, f in enumerate(frames.tolist()):
            masks[i, :f] = generator(rng, f)  # padded frames stay unmasked
        return torch.from_numpy(equalise_counts(masks, rng))
