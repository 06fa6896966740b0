"""Pretraining examples and batches for speech.

``example(i, rng)`` (in a DataLoader worker) reads the utterance, random-crops it to ``data.max_samples`` and draws
a seed for the batch step. :func:`collate` (also in the worker) makes the batch the way fairseq's raw-audio
collater does:

* ``data.batch_mode: crop`` (the reference default, ``pad: false``): every row is randomly cropped to the shortest
  one, so nothing is padded;
* ``data.batch_mode: pad``: rows are right-padded to the longest one and a sample-level padding mask is returned;

then draws every row's R frame masks on its own frames (padded frames are never masked) with a generator seeded
from its example, and equalises the mask counts across the batch (``require_same_masks``). A batch is therefore a
pure function of its examples. The collate is the pretraining source's own method, so the settings it needs
(:class:`BatchSpec`) live with the source, not in every example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from modalities.speech.data.dataset import MAKE_HINT, AudioDataset, SpeechDataConfig
from modalities.speech.data.manifest import read_manifest
from modalities.speech.masking import SpeechMaskConfig, SpeechMaskGenerator, equalise_counts
from modalities.speech.model.adapter import SpeechAdapterConfig
from modalities.speech.model.feature_encoder import conv_output_lengths, receptive_field
from unimim.core.batch import Batch
from unimim.core.masking import draw_masks


@dataclass(frozen=True)
class BatchSpec:
    """How examples become a batch: crop-to-shortest or pad, the frame geometry, and the mask generator."""

    mode: Literal["crop", "pad"]
    conv_layers: tuple[tuple[int, int, int], ...]
    masking: SpeechMaskConfig

    def num_frames(self, samples: int) -> int:
        return int(conv_output_lengths(torch.tensor([samples]), self.conv_layers)[0])


class SpeechPretrainSource:
    """``example(i, rng)`` -> {"inputs": (S,) float32, "seed": int, "skipped": int}; :meth:`collate` makes the
    :class:`Batch` (crop or pad, then masks). ``skipped`` is 1 when utterance ``i`` was unreadable and the next
    readable one took its place: a function of the data alone, so the run's count is the same whatever the
    number of workers (one per bad file per epoch)."""

    def __init__(self, dataset: AudioDataset, spec: BatchSpec, *, max_samples: int) -> None:
        self.dataset = dataset
        self.spec = spec
        self.max_samples = max_samples

    def __len__(self) -> int:
        return len(self.dataset)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        wave, j = self.dataset.read(index)
        if wave.shape[0] > self.max_samples:
            start = int(rng.integers(0, wave.shape[0] - self.max_samples + 1))
            wave = wave[start : start + self.max_samples]
        return {"inputs": torch.from_numpy(np.ascontiguousarray(wave)), "seed": int(rng.integers(0, 2**62)),
                "skipped": int(j != index)}

    def collate(self, examples: list[dict[str, Any]]) -> Batch:
        """-> Batch(inputs (B, S), mask (B, R, N) bool with equal counts per row, padding_mask (B, S) bool in pad
        mode when something is padded)."""
        spec = self.spec
        rngs = [np.random.default_rng(e["seed"]) for e in examples]
        waves = [e["inputs"] for e in examples]
        lengths = [w.shape[0] for w in waves]
        if spec.mode == "crop":
            s = min(lengths)
            starts = [int(rng.integers(0, n - s + 1)) for rng, n in zip(rngs, lengths)]
            inputs = torch.stack([w[a : a + s] for w, a in zip(waves, starts)])  # (B, S)
            lengths = [s] * len(waves)
        else:
            s = max(lengths)
            inputs = torch.zeros(len(waves), s)
            for i, w in enumerate(waves):
                inputs[i, : lengths[i]] = w  # right padding
        n = spec.num_frames(s)
        generator = SpeechMaskGenerator(spec.masking)
        r = spec.masking.num_masks
        masks = np.zeros((len(waves), r, n), dtype=bool)
        for i, (rng, length) in enumerate(zip(rngs, lengths)):
            m = draw_masks(generator, rng, r, spec.num_frames(length))  # (R, n_i)
            masks[i, :, : m.shape[1]] = m  # padded frames stay unmasked
        batch_rng = np.random.default_rng([e["seed"] for e in examples])
        masks = equalise_counts(masks.reshape(-1, n), batch_rng).reshape(len(waves), r, n)  # (B*R, N) -> (B, R, N)
        padding = None
        if min(lengths) < s:
            padding = torch.arange(s)[None, :] >= torch.tensor(lengths)[:, None]  # (B, S)
        return Batch(inputs=inputs, mask=torch.from_numpy(masks), padding_mask=padding,
                     skipped=sum(int(e["skipped"]) for e in examples))


def check_consistency(data: SpeechDataConfig, adapter: SpeechAdapterConfig) -> None:
    field = receptive_field(adapter.conv_layers)
    for name in ("min_samples", "eval_clip_samples"):
        if getattr(data, name) < field:
            raise ValueError(f"data.{name}={getattr(data, name)} is below the feature encoder's receptive field "
                             f"({field} samples)")


def check_experiment(cfg: Any) -> None:
    """The speech settings that only fail together, checked when the config loads."""
    check_consistency(cfg.data, cfg.adapter)
    task = getattr(cfg, "task", None)  # the labelled task of fine-tuning, where the config has one
    field = receptive_field(cfg.adapter.conv_layers)
    if task is not None and task.max_samples is not None and task.max_samples < field:
        raise ValueError(f"task.max_samples={task.max_samples} is below the feature encoder's receptive field "
                         f"({field} samples)")


def build_pretrain_source(data: SpeechDataConfig, masking: SpeechMaskConfig, adapter: SpeechAdapterConfig):
    check_consistency(data, adapter)
    manifest = read_manifest(data.manifest, hint=MAKE_HINT)
    dataset = AudioDataset(manifest, min_samples=data.min_samples, normalize=data.normalize, limit=data.limit,
                           min_readable=receptive_field(adapter.conv_layers), max_seconds=data.max_file_seconds)
    spec = BatchSpec(mode=data.batch_mode, conv_layers=tuple(adapter.conv_layers), masking=masking)
    return SpeechPretrainSource(dataset, spec, max_samples=data.max_samples)

