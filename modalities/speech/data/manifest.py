"""fairseq's audio manifest: a TSV whose first line is the root directory, then ``relative_path<TAB>num_samples``.

Lengths here count samples at the target rate (16 kHz), i.e. ``frames * 16000 // file_rate``, so that length
filters work without opening files whatever rate a file is stored at (fairseq's manifests hold 16 kHz audio, where
both counts agree). Labels of a labeled manifest live in a parallel file with one line per entry, fairseq-style
(``train.tsv`` + ``train.wrd``: the word spoken).

Written by ``python -m modalities.speech.data.build_manifest`` (:mod:`modalities.speech.data.build_manifest`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")
TARGET_RATE = 16_000


@dataclass
class Manifest:
    """root: directory the paths are relative to; paths / lengths: one entry per utterance (lengths in 16 kHz
    samples); labels: one string per entry, or None."""

    root: Path
    paths: list[str]
    lengths: list[int]
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)


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
    paths, lengths = [], []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise ValueError(f"{path}:{no}: expected 'relative_path<TAB>num_samples', got {line!r}")
        paths.append(parts[0])
        lengths.append(int(parts[1]))
    out = Manifest(root=root, paths=paths, lengths=lengths)
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


def build_manifest(root: str | Path, *, pattern: str = "*", labels_from_parent: bool = False) -> Manifest:
    """Scan ``root`` recursively for wav/flac/ogg files matching ``pattern``; unreadable or empty files are
    skipped, counted and logged. Entries are sorted by path; with ``labels_from_parent`` each file's label is the
    name of its parent directory."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist")
    files = sorted(p for p in root.rglob(pattern) if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    paths, lengths, labels, bad = [], [], [], 0
    for f in files:
        try:
            info = sf.info(str(f))
            n = int(info.frames) * TARGET_RATE // int(info.samplerate)
        except (sf.LibsndfileError, RuntimeError, ValueError, ZeroDivisionError) as e:
            logger.warning("skipping unreadable audio file %s: %s", f, e)
            bad += 1
            continue
        if n == 0:
            logger.warning("skipping empty audio file %s", f)
            bad += 1
            continue
        paths.append(str(f.relative_to(root)))
        lengths.append(n)
        labels.append(f.parent.name)
    logger.info("manifest of %s: %d files (%.2f h at 16 kHz), %d skipped", root, len(paths),
                sum(lengths) / TARGET_RATE / 3600, bad)
    return Manifest(root=root, paths=paths, lengths=lengths, labels=labels if labels_from_parent else None)
