"""ImageFolder-style trees of a user's own images: any PIL-readable file, mixed sizes and modes.

An unreadable or truncated file never crashes a run: it is logged once, counted (``num_skipped``, ``bad_paths``)
and replaced by the next readable sample. PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left
``False``: a truncated file is bad input, not an image to be silently padded with grey.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile
from torch.utils.data import Dataset

from modalities.image.data.modes import check_limit, to_mode

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
UNLABELED = -1  # label of files lying directly under an ImageFolder root (no class directory)


class ImageFolder(Dataset):
    """Images under ``root``, one class per first-level subdirectory, loaded lazily with PIL.

    * Files are found recursively (extensions in :data:`IMAGE_EXTENSIONS`, case-insensitive; hidden files and
      directories are ignored; symlinked directories are followed once). They are sorted by relative path.
    * ``classes`` are the sorted names of the non-hidden first-level subdirectories (so the index of a class
      does not depend on which split happens to contain images of it); ``class_to_idx`` maps them.
    * Files lying directly under ``root`` get label :data:`UNLABELED` (-1): an unlabeled folder is fine for
      pretraining; a linear probe must not use such samples.
    * Every image is converted to ``mode`` with :func:`to_mode` (transparency composited on white).
    * A file PIL cannot open or fully decode is skipped: logged once, counted in ``num_skipped`` (unique files)
      and ``bad_paths``, and replaced by the next readable sample (index + 1, + 2, ... wrapping around).
      These counters are per process (each DataLoader worker keeps its own); what a run counts comes from
      :meth:`read`, which says which sample was read (see :func:`read_sample`), a function of the files alone.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: no image file under ``root``.
    """

    def __init__(self, root: str | os.PathLike[str], mode: str = "RGB", limit: int | None = None) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        check_limit(limit)
        self.root = Path(root)
        self.mode = mode
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.classes: list[str] = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        samples = self._scan()
        if not samples:
            raise ValueError(
                f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {self.root}"
            )
        if limit is not None:
            samples = samples[:limit]
        self.samples: list[tuple[Path, int]] = samples
        self.targets: list[int] = [label for _, label in samples]
        self.num_skipped = 0
        self.bad_paths: list[Path] = []
        self._bad: set[int] = set()
        self._warned_truncated_flag = False

    def _scan(self) -> list[tuple[Path, int]]:
        found: list[tuple[str, int]] = []
        seen_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:  # symlink cycle or a directory reachable twice
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, self.root)
            top = "" if rel_dir == "." else rel_dir.split(os.sep, 1)[0]
            label = self.class_to_idx.get(top, UNLABELED)
            for name in filenames:
                if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                found.append((os.path.join(dirpath, name), label))
        found.sort(key=lambda item: item[0])
        return [(Path(p), label) for p, label in found]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> Image.Image:
        """Open, fully decode and convert one file; raises whatever PIL raises on bad input."""
        if ImageFile.LOAD_TRUNCATED_IMAGES and not self._warned_truncated_flag:
            self._warned_truncated_flag = True
            logger.warning(
                "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by someone else: truncated files will "
                "load as partly grey images instead of being skipped"
            )
        with Image.open(path) as img:
            img.load()
            out = to_mode(img, self.mode)
            if out is img:  # keep a decoded copy independent of the closed file
                out = img.copy()
        return out

    def read(self, index: int) -> tuple[Image.Image, int, int]:
        """(image, label, index actually read): the first readable sample at or after ``index`` (wrapping around)."""
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            path, label = self.samples[i]
            try:
                return self.load(path), label, i
            except Exception as e:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, ValueError, EOFError, ...
                self._bad.add(i)
                self.bad_paths.append(path)
                self.num_skipped += 1
                logger.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
        raise RuntimeError(f"no readable image under {self.root}: all {n} files failed to load")

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image, label, _ = self.read(index)
        return image, label


def read_sample(dataset: Dataset, index: int) -> tuple[Any, int, bool]:
    """``(image, label, replaced)``: ``dataset[index]``, and whether sample ``index`` was unreadable so that the next
    readable one took its place. ``replaced`` depends on the files alone, not on which process or DataLoader worker
    reads (nor on what it read before), so a run's count of skipped inputs -- one per bad file per epoch -- is the
    same whatever ``train.num_workers``. Data sets without a ``read`` method (IDX, synthetic) never replace."""
    read = getattr(dataset, "read", None)
    if read is None:
        image, label = dataset[index]
        return image, label, False
    image, label, j = read(index)
    return image, label, j != index % len(dataset)
