"""Speech data: audio manifests read with soundfile, mono 16 kHz, per-utterance normalised.

* :class:`AudioDataset` -- the utterances of a manifest (pretraining), filtered by length; items are float32
  (S,) waveforms.
* :class:`KeywordDataset` -- a labeled manifest (``.tsv`` + ``.wrd``) as fixed-length clips for the keyword probe
  (the Speech Commands convention: every clip padded with silence, or centre-cropped, to the same length, so a
  batch needs no padding mask); items are ``(float32 (clip_samples,), int label)``.

Bad input -- what is refused and what is skipped:

* Refused (a ValueError naming the manifest line, before training starts): a manifest entry whose length disagrees
  with its file's header (a stale manifest: a 500-sample file listed as 16,000 would pass the length filter and, in
  crop mode, shrink every batch it lands in to 500 samples). Every entry's header is read when the data set is built
  (a header read, no decoding); the error names the first disagreeing line and counts them all.
* Left out when the data set is built (logged): entries whose manifest length is under ``min_samples`` or over
  ``max_file_seconds``.
* Skipped (logged once, counted in ``num_skipped`` / ``bad_paths`` per process, replaced by the next entry; a run
  never stops): a file that cannot be opened or decoded, is truncated, has a header :func:`header_problem` rejects
  (sample rate outside [1 kHz, 384 kHz], over 32 channels, empty, longer than ``max_file_seconds`` -- checked before
  decoding), changed length since the data set was built, holds non-finite samples, or is shorter than the feature
  encoder's receptive field.

A file at another sample rate is resampled with torchaudio's windowed-sinc resampler; multi-channel audio is mixed
down to mono (block by block, so only the mono signal is ever held). Normalisation is scale-free: audio beyond full
scale (float files hold any value, e.g. 1e30) is scaled to a peak of 1 first, so that its variance cannot overflow.
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

from modalities.speech.data.manifest import (
    TARGET_RATE,
    AudioHeader,
    Manifest,
    header_problem,
    read_header,
)

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
    max_file_seconds: float = 300.0   # longer files are left out / skipped before decoding (all of a file is read)
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
        if not self.max_file_seconds * TARGET_RATE >= self.min_samples:
            raise ValueError(f"data.max_file_seconds={self.max_file_seconds} is shorter than data.min_samples="
                             f"{self.min_samples} samples at 16 kHz")


_RESAMPLERS: dict[int, torchaudio.transforms.Resample] = {}


def _resampler(rate: int) -> torchaudio.transforms.Resample:
    """A windowed-sinc resampler ``rate`` -> 16 kHz (torchaudio's default filter), its kernel built once per rate."""
    if rate not in _RESAMPLERS:
        _RESAMPLERS[rate] = torchaudio.transforms.Resample(rate, TARGET_RATE)
    return _RESAMPLERS[rate]


BLOCK_FRAMES = 1 << 16  # frames decoded at a time (multi-channel files are mixed down block by block)


def load_audio(path: str | Path, *, normalize: bool = True, max_seconds: float | None = None,
               expected_samples: int | None = None) -> np.ndarray:
    """Read any soundfile format -> float32 (S,) mono at 16 kHz (mixed down, resampled), optionally normalised to
    zero mean and unit variance (fairseq's ``F.layer_norm(wav, wav.shape)``).

    The header is checked before anything is decoded (:func:`header_problem`, ``max_seconds``), and against
    ``expected_samples`` (the manifest's length in 16 kHz samples) when given. Raises ValueError, with the reason,
    on a file that cannot be opened or decoded, a rejected header, a length other than ``expected_samples``, a
    truncated file, or non-finite samples."""
    try:
        with sf.SoundFile(str(path)) as f:
            header = AudioHeader(frames=int(f.frames), rate=int(f.samplerate), channels=int(f.channels))
            problem = header_problem(header, max_seconds)
            if problem is not None:
                raise ValueError(problem)
            if expected_samples is not None and header.samples != expected_samples:
                raise ValueError(f"{header.samples} samples at 16 kHz, but the manifest says {expected_samples} (the "
                                 "file changed after the manifest was checked)")
            wave = _decode_mono(f, header)  # (S,) at the file's rate
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise ValueError(f"cannot be decoded: {e}") from None
    if not np.isfinite(wave).all():
        raise ValueError("non-finite samples")
    peak = float(np.abs(wave).max())
    if normalize and peak > 1.0:  # beyond full scale: x / peak keeps the variance finite; the result is scale-free
        wave /= np.float32(peak)
    if header.rate != TARGET_RATE:
        with torch.no_grad():
            wave = _resampler(header.rate)(torch.from_numpy(wave)).numpy()
        if not np.isfinite(wave).all():
            raise ValueError(f"samples up to {peak:.3g} overflow when resampled (float32)")
    if normalize:
        wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-5)
    return wave.astype(np.float32, copy=False)


def _decode_mono(f: sf.SoundFile, header: AudioHeader) -> np.ndarray:
    """All frames of an open file mixed down to mono: float32 (frames,). ValueError if the file is truncated."""
    wave = np.empty(header.frames, dtype=np.float32)
    pos = 0
    for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):  # (b, C)
        m = block.shape[0]
        if pos + m > header.frames:
            raise ValueError(f"more frames than the {header.frames} its header announces")
        wave[pos : pos + m] = block[:, 0] if header.channels == 1 else block.mean(axis=1, dtype=np.float64)
        pos += m
    if pos < header.frames:
        raise ValueError(f"truncated: {pos} of the {header.frames} frames its header announces could be decoded")
    return wave


class AudioDataset(Dataset):
    """Utterances of a manifest with ``min_samples <= length <= max_seconds`` (manifest lengths), checked against
    their files' headers (a disagreement refuses the manifest), unreadable files skipped (see the module doc).

    ``read(i)`` returns the first readable entry at or after ``i`` and its index: a caller counts an example as
    skipped when the index differs, which depends only on the data, never on the process or the worker.
    ``num_skipped`` / ``bad_paths``: the distinct unreadable files this process met."""

    def __init__(self, manifest: Manifest, *, min_samples: int = 1, normalize: bool = True,
                 limit: int | None = None, min_readable: int = 400, max_seconds: float = 300.0) -> None:
        lo, hi = max(min_samples, min_readable), int(max_seconds * TARGET_RATE)
        keep = [i for i, n in enumerate(manifest.lengths) if lo <= n <= hi]
        if limit is not None:
            keep = keep[:limit]
        else:
            short = sum(n < lo for n in manifest.lengths)
            long = sum(n > hi for n in manifest.lengths)
            if short:
                logger.info("%d of %d utterances shorter than %d samples were left out", short, len(manifest), lo)
            if long:
                logger.warning("%d of %d utterances longer than %g s (data.max_file_seconds) were left out", long,
                               len(manifest), max_seconds)
        if not keep:
            raise ValueError(f"no utterance of the manifest (root {manifest.root}) is at least {min_samples} samples "
                             f"and at most {max_seconds:g} s long")
        check_lengths(manifest, keep)
        self.root = manifest.root
        self.paths = [manifest.paths[i] for i in keep]
        self.lengths = [manifest.lengths[i] for i in keep]
        self.labels = None if manifest.labels is None else [manifest.labels[i] for i in keep]
        self.normalize = normalize
        self.min_readable = min_readable
        self.max_seconds = max_seconds
        self.num_skipped = 0
        self.bad_paths: list[Path] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """(waveform, index actually read): the first readable entry at or after ``index`` (wrapping around)."""
        n = len(self.paths)
        for k in range(n):
            j = (index + k) % n
            if j in self._bad:
                continue
            path = self.root / self.paths[j]
            try:
                wave = load_audio(path, normalize=self.normalize, max_seconds=self.max_seconds,
                                  expected_samples=self.lengths[j])
                if wave.shape[0] < self.min_readable:
                    raise ValueError(f"{wave.shape[0]} samples, fewer than the {self.min_readable} needed")
                return wave, j
            except ValueError as e:
                self._bad.add(j)
                self.bad_paths.append(path)
                self.num_skipped += 1
                logger.warning("skipping unreadable audio %s: %s", path, e)
        raise ValueError(f"none of the {n} audio files under {self.root} could be read (see the warnings above)")

    def __getitem__(self, index: int) -> Tensor:
        return torch.from_numpy(self.read(index)[0])


def check_lengths(manifest: Manifest, entries: list[int]) -> None:
    """Refuse a stale manifest: every entry's length must equal its file's (``frames * 16000 // rate``, from the
    header). Files that cannot be opened, or whose header is rejected, are left to the skip policy of
    :meth:`AudioDataset.read`. Raises ValueError naming the first disagreeing line and counting them all."""
    wrong: list[tuple[int, AudioHeader]] = []
    unreadable = 0
    for i in entries:
        try:
            header = read_header(manifest.root / manifest.paths[i])
        except ValueError:
            unreadable += 1
            continue
        if header_problem(header) is None and header.samples != manifest.lengths[i]:
            wrong.append((i, header))
    if unreadable:
        logger.warning("%d of %d audio files of the manifest (root %s) cannot be opened; they will be skipped",
                       unreadable, len(entries), manifest.root)
    if wrong:
        i, h = wrong[0]
        raise ValueError(
            f"{manifest.where(i)}: {manifest.paths[i]} is listed with {manifest.lengths[i]} samples but the file has "
            f"{h.samples} (16 kHz samples; {h.frames} frames at {h.rate} Hz); {len(wrong)} of {len(entries)} entries "
            "disagree with their files: the manifest is stale, rebuild it with `python -m "
            "modalities.speech.data.build_manifest ROOT OUT.tsv`")


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
                 normalize: bool = True, limit: int | None = None, max_seconds: float = 300.0) -> None:
        if manifest.labels is None:
            raise ValueError("a keyword manifest needs its .wrd label file")
        self.audio = AudioDataset(manifest, normalize=normalize, limit=limit, max_seconds=max_seconds)
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

