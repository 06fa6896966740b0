"""Speech data: audio manifests read with soundfile, mono 16 kHz, per-utterance normalised.

* :class:`AudioDataset` -- the utterances of a manifest (pretraining), filtered by length; items are float32
  (S,) waveforms.
* :class:`KeywordDataset` -- a labeled manifest (``.tsv`` + ``.wrd``) as fixed-length clips for the keyword probe
  (the Speech Commands convention: every clip padded with silence, or centre-cropped, to the same length, so a
  batch needs no padding mask); items are ``(float32 (clip_samples,), int label)``.

Robustness: a file that cannot be read, is empty, holds non-finite samples or is shorter than the feature
encoder's receptive field is logged once, counted (``num_skipped``, ``bad_paths``) and replaced by the next
entry; it never stops a run. A file at another sample rate is resampled with torchaudio's windowed-sinc resampler;
multi-channel audio is mixed down to mono.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor
from torch.utils.data import Dataset

from modalities.speech.data.manifest import TARGET_RATE, Manifest, read_manifest

logger = logging.getLogger(__name__)

MAKE_HINT = " (the default speech data is prepared by `make data-speech`)"


@dataclass
class SpeechDataConfig:
    manifest: str = "data/speech/tuxpaint.tsv"                 # pretraining manifest (fairseq TSV)
    eval_train_manifest: str = "data/speech/keywords/train.tsv"  # labeled probe sets (.tsv + .wrd), split by voice
    eval_test_manifest: str = "data/speech/keywords/test.tsv"
    batch_mode: Literal["crop", "pad"] = "crop"  # crop every row to the shortest (reference) | pad + padding mask
    normalize: bool = True            # zero mean, unit variance per utterance (data2vec: normalize: true)
    min_samples: int = 8_000          # drop utterances shorter than this (16 kHz samples)
    max_samples: int = 40_000         # random crop to at most this many samples
    eval_clip_samples: int = 20_000   # keyword clips: padded / centre-cropped to this length
    limit: int | None = None          # use only the first `limit` utterances (smoke tests)

    def __post_init__(self) -> None:
        if self.min_samples < 1 or self.max_samples < self.min_samples:
            raise ValueError(f"need 1 <= data.min_samples <= data.max_samples, got {self.min_samples}, "
                             f"{self.max_samples}")
        if self.batch_mode not in ("crop", "pad"):
            raise ValueError(f"data.batch_mode must be 'crop' or 'pad', got {self.batch_mode!r}")
        if self.eval_clip_samples < 1:
            raise ValueError(f"data.eval_clip_samples must be >= 1, got {self.eval_clip_samples}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be None or >= 1, got {self.limit}")


_RESAMPLERS: dict[int, torchaudio.transforms.Resample] = {}


def _resampler(rate: int) -> torchaudio.transforms.Resample:
    """A windowed-sinc resampler ``rate`` -> 16 kHz (torchaudio's default filter), its kernel built once per rate."""
    if rate not in _RESAMPLERS:
        _RESAMPLERS[rate] = torchaudio.transforms.Resample(rate, TARGET_RATE)
    return _RESAMPLERS[rate]


def load_audio(path: str | Path, *, normalize: bool = True) -> np.ndarray:
    """Read any soundfile format -> float32 (S,) mono at 16 kHz (mixed down, resampled), optionally normalised to
    zero mean and unit variance. Raises ValueError on empty or non-finite audio."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    wave = data.mean(axis=1)  # (S, C) -> (S,)
    if wave.size == 0:
        raise ValueError("empty audio")
    if not np.isfinite(wave).all():
        raise ValueError("non-finite samples")
    if rate != TARGET_RATE:
        with torch.no_grad():
            wave = _resampler(int(rate))(torch.from_numpy(wave)).numpy()
    if normalize:
        wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-5)  # fairseq: F.layer_norm(wav, wav.shape)
    return wave.astype(np.float32, copy=False)


class AudioDataset(Dataset):
    """Utterances of a manifest with ``min_samples <= length`` (manifest lengths), unreadable files skipped."""

    def __init__(self, manifest: Manifest, *, min_samples: int = 1, normalize: bool = True,
                 limit: int | None = None, min_readable: int = 400) -> None:
        keep = [i for i, n in enumerate(manifest.lengths) if n >= max(min_samples, min_readable)]
        if limit is not None:
            keep = keep[:limit]
        dropped = len(manifest) - len(keep) if limit is None else 0
        if dropped:
            logger.info("%d of %d utterances shorter than %d samples were left out", dropped, len(manifest),
                        max(min_samples, min_readable))
        if not keep:
            raise ValueError(f"no utterance of the manifest (root {manifest.root}) is at least {min_samples} samples "
                             "long")
        self.root = manifest.root
        self.paths = [manifest.paths[i] for i in keep]
        self.lengths = [manifest.lengths[i] for i in keep]
        self.labels = None if manifest.labels is None else [manifest.labels[i] for i in keep]
        self.normalize = normalize
        self.min_readable = min_readable
        self.num_skipped = 0
        self.bad_paths: list[Path] = []

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """(waveform, index actually read): the first readable entry at or after ``index`` (wrapping around)."""
        n = len(self.paths)
        for k in range(n):
            j = (index + k) % n
            path = self.root / self.paths[j]
            try:
                wave = load_audio(path, normalize=self.normalize)
                if wave.shape[0] < self.min_readable:
                    raise ValueError(f"{wave.shape[0]} samples, fewer than the {self.min_readable} needed")
                return wave, j
            except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
                if path not in self.bad_paths:
                    logger.warning("skipping unreadable audio %s: %s", path, e)
                    self.bad_paths.append(path)
                self.num_skipped += 1
        raise RuntimeError(f"none of the {n} audio files under {self.root} could be read")

    def __getitem__(self, index: int) -> Tensor:
        return torch.from_numpy(self.read(index)[0])


def fit_clip(wave: np.ndarray, length: int) -> np.ndarray:
    """Centre ``wave`` in ``length`` samples: zero-pad both sides, or centre-crop. (S,) -> (length,)."""
    s = wave.shape[0]
    if s >= length:
        start = (s - length) // 2
        return wave[start : start + length]
    out = np.zeros(length, dtype=wave.dtype)
    start = (length - s) // 2
    out[start : start + s] = wave
    return out


class KeywordDataset(Dataset):
    """Labeled clips: items ``(float32 (clip_samples,), int label)``; ``classes`` sorted, shared across splits."""

    def __init__(self, manifest: Manifest, *, clip_samples: int, classes: list[str] | None = None,
                 normalize: bool = True, limit: int | None = None) -> None:
        if manifest.labels is None:
            raise ValueError("a keyword manifest needs its .wrd label file")
        self.audio = AudioDataset(manifest, normalize=normalize, limit=limit)
        self.classes = sorted(set(self.audio.labels)) if classes is None else list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(self.audio.labels) - set(index))
        if unknown:
            raise ValueError(f"labels {unknown} of the test split do not occur in the training split")
        self.targets = [index[w] for w in self.audio.labels]
        self.clip_samples = clip_samples

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        wave, j = self.audio.read(index)
        return torch.from_numpy(fit_clip(wave, self.clip_samples)), self.targets[j]

    @property
    def num_skipped(self) -> int:
        return self.audio.num_skipped


def build_keyword_sets(cfg: SpeechDataConfig) -> tuple[KeywordDataset, KeywordDataset]:
    train_m = read_manifest(cfg.eval_train_manifest, labels=True, hint=MAKE_HINT)
    test_m = read_manifest(cfg.eval_test_manifest, labels=True, hint=MAKE_HINT)
    train = KeywordDataset(train_m, clip_samples=cfg.eval_clip_samples, normalize=cfg.normalize, limit=cfg.limit)
    test = KeywordDataset(test_m, clip_samples=cfg.eval_clip_samples, classes=train.classes,
                          normalize=cfg.normalize, limit=cfg.limit)
    logger.info("keyword probe: %d classes, %d train / %d test clips", len(train.classes), len(train), len(test))
    return train, test
