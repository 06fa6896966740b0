"""fairseq's audio manifest: a TSV whose first line is the root directory, then ``relative_path<TAB>num_samples``.

Lengths here count samples at the target rate (16 kHz), i.e. ``frames * 16000 // file_rate``, so that length
filters work without opening files whatever rate a file is stored at (fairseq's manifests hold 16 kHz audio, where
both counts agree). Labels of a labeled manifest live in a parallel file with one line per entry, fairseq-style
(``train.tsv`` + ``train.wrd``: the word spoken).

Written by ``python -m modalities.speech.data.build_manifest`` (:mod:`modalities.speech.data.build_manifest`).

A file's header (:func:`read_header`, no decoding) gives its length; :func:`header_problem` says why a header is not
usable audio: no frames, a sample rate outside [:data:`MIN_RATE`, :data:`MAX_RATE`], more than :data:`MAX_CHANNELS`
channels, or longer than a maximum duration. Such files are left out of a built manifest and skipped when read.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")
TARGET_RATE = 16_000
MIN_RATE, MAX_RATE = 1_000, 384_000  # Hz: no recording is stored outside; such a rate is a broken header
MAX_CHANNELS = 32
MAX_RESAMPLE_KERNEL = 1 << 24  # rate / 16 kHz reduced to p / q: the windowed-sinc kernel holds about p * q taps


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header announces, read without decoding: ``frames`` per channel at ``rate`` Hz."""

    frames: int
    rate: int
    channels: int

    @property
    def samples(self) -> int:
        """The length in 16 kHz samples, the manifest's convention: ``frames * 16000 // rate``."""
        return self.frames * TARGET_RATE // self.rate if self.rate > 0 else 0

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate > 0 else 0.0


def read_header(path: str | Path) -> AudioHeader:
    """The header of an audio file; ValueError (libsndfile's reason) when it cannot be opened."""
    try:
        with sf.SoundFile(str(path)) as f:
            return AudioHeader(frames=int(f.frames), rate=int(f.samplerate), channels=int(f.channels))
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise ValueError(f"cannot be opened: {e}") from None


def header_problem(header: AudioHeader, max_seconds: float | None = None) -> str | None:
    """Why a file with this header is not used, or None: a sample rate outside [MIN_RATE, MAX_RATE] or one whose
    resampling filter would be huge (383,999 Hz), more than MAX_CHANNELS channels, no frames, or (given
    ``max_seconds``) longer than ``max_seconds``. Checked before anything is decoded, so that a broken header (1 Hz:
    16,000 output samples per stored one) never allocates."""
    if not MIN_RATE <= header.rate <= MAX_RATE:
        return f"sample rate {header.rate} Hz outside [{MIN_RATE}, {MAX_RATE}] Hz"
    g = math.gcd(header.rate, TARGET_RATE)
    if (header.rate // g) * (TARGET_RATE // g) > MAX_RESAMPLE_KERNEL:
        return (f"sample rate {header.rate} Hz has no small ratio to 16 kHz ({header.rate // g}:{TARGET_RATE // g}): "
                "its resampling filter would not fit in memory")
    if header.channels < 1 or header.channels > MAX_CHANNELS:
        return f"{header.channels} channels (at most {MAX_CHANNELS} are read)"
    if header.frames <= 0:
        return "empty audio"
    if max_seconds is not None and header.seconds > max_seconds:
        return f"{header.seconds:.1f} s long, over the {max_seconds:g} s limit (data.max_file_seconds)"
    return None


@dataclass
class Manifest:
    """root: directory the paths are relative to; paths / lengths: one entry per utterance (lengths in 16 kHz
    samples); labels: one string per entry, or None; file / line_numbers: where a read manifest came from (for
    error messages), or None."""

    root: Path
    paths: list[str]
    lengths: list[int]
    labels: list[str] | None = None
    file: Path | None = None
    line_numbers: list[int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, i: int) -> str:
        """``manifest.tsv:LINE`` of entry ``i`` (or ``manifest entry i`` of a manifest built in memory)."""
        if self.file is not None and self.line_numbers is not None:
            return f"{self.file}:{self.line_numbers[i]}"
        return f"manifest entry {i} (root {self.root})"


def label_path(manifest: str | Path) -> Path:
    return Path(manifest).with_suffix(".wrd")


def read_manifest(path: str | Path, *, labels: bool = False, hint: str = "") -> Manifest:
    """Parse a manifest (and its ``.wrd`` label file when ``labels``). Missing files and malformed lines are clear
    errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio manifest {path} does not exist{hint}")
    lines = path.read_text().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty manifest (the first line must be the root directory)")
    root = Path(lines[0].strip())
    paths, lengths, numbers = [], [], []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise ValueError(f"{path}:{no}: expected 'relative_path<TAB>num_samples', got {line!r}")
        paths.append(parts[0])
        lengths.append(int(parts[1]))
        numbers.append(no)
    out = Manifest(root=root, paths=paths, lengths=lengths, file=path, line_numbers=numbers)
    if labels:
        lpath = label_path(path)
        if not lpath.is_file():
            raise FileNotFoundError(f"label file {lpath} for manifest {path} does not exist{hint}")
        words = [w.strip() for w in lpath.read_text().splitlines() if w.strip()]
        if len(words) != len(paths):
            raise ValueError(f"{lpath} has {len(words)} labels for {len(paths)} manifest entries")
        out.labels = words
    return out


def write_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write the TSV (and ``.wrd`` when labeled) atomically: a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [str(manifest.root)] + [f"{p}\t{n}" for p, n in zip(manifest.paths, manifest.lengths)]
    _atomic_write(path, "\n".join(body) + "\n")
    if manifest.labels is not None:
        _atomic_write(label_path(path), "\n".join(manifest.labels) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def usable_samples(path: Path) -> int | None:
    """The length in 16 kHz samples that ``path``'s header announces, or None (the reason logged as a warning) when
    the file cannot be opened, :func:`header_problem` rejects its header, or it is shorter than one 16 kHz sample.
    The one per-file check of every folder scan."""
    try:
        header = read_header(path)
    except ValueError as e:
        logger.warning("skipping unreadable audio file %s: %s", path, e)
        return None
    problem = header_problem(header)
    if problem is None and header.samples == 0:
        problem = "shorter than one 16 kHz sample"
    if problem is not None:
        logger.warning("skipping audio file %s: %s", path, problem)
        return None
    return header.samples


def build_manifest(root: str | Path, *, pattern: str = "*", labels_from_parent: bool = False) -> Manifest:
    """Scan ``root`` recursively for wav/flac/ogg files matching ``pattern``; unreadable files and files whose header
    :func:`header_problem` rejects (empty, absurd sample rate or channel count) are skipped, counted and logged.
    Entries are sorted by path; with ``labels_from_parent`` each file's label is the name of its parent directory."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist")
    files = sorted(p for p in root.rglob(pattern) if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    paths, lengths, labels, bad = [], [], [], 0
    for f in files:
        n = usable_samples(f)
        if n is None:
            bad += 1
            continue
        paths.append(str(f.relative_to(root)))
        lengths.append(n)
        labels.append(f.parent.name)
    logger.info("manifest of %s: %d files (%.2f h at 16 kHz), %d skipped", root, len(paths),
                sum(lengths) / TARGET_RATE / 3600, bad)
    return Manifest(root=root, paths=paths, lengths=lengths, labels=labels if labels_from_parent else None)
