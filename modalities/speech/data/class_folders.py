"""A labelled folder of audio files, one sub-folder per class and split, read without a manifest step:

    root/train/<class>/**/*.wav|flac|ogg
    root/test/<class>/...      (or root/val/..., the split named by task.test_split)

The class of a file is the first folder under its split; files may sit deeper (``<class>/<speaker>/x.flac``).
Lengths come from the files' headers (no decoding); files that
:func:`~modalities.speech.data.manifest.usable_samples` rejects are left out and counted, as in
:func:`~modalities.speech.data.manifest.build_manifest`. A missing split, a split without class folders, or a class
folder without audio is a clear error naming what was found.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modalities.speech.data.manifest import AUDIO_EXTENSIONS, Manifest, usable_samples

logger = logging.getLogger(__name__)


def _folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_dir(root: str | Path, split: str) -> Path:
    """``root/split``; FileNotFoundError naming the folders that exist when it does not."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"labelled audio folder {root} does not exist")
    path = root / split
    if not path.is_dir():
        found = _folders(root)
        raise FileNotFoundError(f"labelled audio folder {root} has no split folder {split!r} (found: "
                                f"{', '.join(found) if found else 'no folders'}); expected "
                                f"{root}/{split}/<class>/*.wav|flac|ogg")
    return path


def scan_split(root: str | Path, split: str) -> Manifest:
    """The audio files of ``root/split/<class>/`` as a labelled manifest (labels: class folder names), sorted by
    class then path. Raises FileNotFoundError / ValueError as the module doc says."""
    base = split_dir(root, split)
    classes = _folders(base)
    if not classes:
        raise ValueError(f"{base} has no class folders: expected {base}/<class>/*.wav|flac|ogg")
    paths, lengths, labels, bad = [], [], [], 0
    for name in classes:
        files = sorted(p for p in (base / name).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"class folder {base / name} holds no audio file ({', '.join(AUDIO_EXTENSIONS)})")
        for f in files:
            n = usable_samples(f)
            if n is None:
                bad += 1
                continue
            paths.append(str(f.relative_to(base)))
            lengths.append(n)
            labels.append(name)
    if not paths:
        raise ValueError(f"no readable audio file under {base} ({bad} skipped)")
    logger.info("%s: %d files in %d classes, %d skipped", base, len(paths), len(classes), bad)
    return Manifest(root=base.resolve(), paths=paths, lengths=lengths, labels=labels)
