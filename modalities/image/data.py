"""Image data sets for the image modality: pretraining views and linear-probe evaluation.

Three sources, all yielding ``(PIL.Image, int label)`` items in one configured mode ("L" or "RGB"):

* ``fashion_mnist`` -- the original IDX files (Debian ``dataset-fashion-mnist``), see :class:`FashionMNIST`;
* ``folder`` -- an ImageFolder-style tree of a user's own images, see :class:`ImageFolder`;
* ``synthetic`` -- deterministic random images for benchmarks and smoke tests, see :class:`SyntheticImages`.

:func:`build_image_dataset` builds the raw data set for a split; given a ``transform`` (usually
:func:`pretrain_transform` or :func:`eval_transform`) it wraps it in :class:`ImageDataset`, whose items
are ``(Tensor (C, S, S) float32, int label)``.

Robustness policy for user folders: an unreadable or truncated file never crashes a run. It is logged
once, counted (``num_skipped``, ``bad_paths``) and replaced by the next readable sample. PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left ``False``: a truncated file is bad input, not an
image to be silently padded with grey.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("fashion_mnist", "folder", "synthetic")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
FASHION_MNIST_HINT = "install the Debian package dataset-fashion-mnist (make data does this as root)"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
UNLABELED = -1  # label of files lying directly under an ImageFolder root (no class directory)

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------------------------- config


@dataclass
class ImageDataConfig:
    """Where images come from and how they are turned into tensors.

    YAML recipes map onto this dataclass, so tuple fields may arrive as lists; they are normalised to tuples.
    ``mean``/``std`` of length 1 are broadcast to every channel when ``channels == 3``.
    """

    source: Literal["fashion_mnist", "folder", "synthetic"] = "fashion_mnist"
    root: str = "/usr/share/datasets/fashion-mnist"  # IDX dir for fashion_mnist, ImageFolder root for folder
    split: str = "train"  # fashion_mnist: train | test; folder: subdirectory of root if it exists, else root
    image_size: int = 28  # output side in pixels
    channels: int = 1  # 1 ("L") or 3 ("RGB"); every image is converted to this mode
    crop_scale: tuple[float, float] = (0.35, 1.0)  # RandomResizedCrop scale for pretraining views
    hflip: bool = True
    mean: tuple[float, ...] = (0.2860,)  # Fashion-MNIST train mean/std
    std: tuple[float, ...] = (0.3530,)
    synthetic_size: int = 256  # number of random images for source=synthetic
    limit: int | None = None  # use only the first `limit` samples (smoke tests)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown image data source {self.source!r}; valid sources: {', '.join(SOURCES)}")
        self.root = str(self.root)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_scale}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.synthetic_size <= 0:
            raise ValueError(f"synthetic_size must be positive, got {self.synthetic_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be None or >= 1, got {self.limit}")

    @property
    def mode(self) -> str:
        """PIL mode every image is converted to: "L" or "RGB"."""
        return _mode_for(self.channels)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std), each with exactly ``channels`` values."""
        return _broadcast(self.mean, self.channels), _broadcast(self.std, self.channels)


def _mode_for(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


def _broadcast(values: Sequence[float], n: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    return values * n if len(values) == 1 else values


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")


# ------------------------------------------------------------------------------------------------ IDX


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not; detected from the content, not the name).

    Format: two zero bytes, a type code (0x08 = uint8; 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64 are accepted too), the number of dimensions, then one big-endian int32 per dimension and
    the data. Returns an array of that shape in native byte order.

    Raises:
        ValueError: bad magic number or data size not matching the header (message names the path).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says shape {shape} ({expected} data bytes), "
            f"file has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


# ------------------------------------------------------------------------------------- mode conversion


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert a PIL image of any mode to ``mode`` ("L" or "RGB").

    Transparent images (RGBA, LA, PA, La, RGBa, P or L/RGB with a ``transparency`` entry) are composited on
    white first. 16-bit images (I;16*) are scaled by 1/257; 32-bit "I" images are treated as 16-bit data when
    their maximum exceeds 255 (PIL's own conversion clips instead of scaling); float "F" images in [0, 1] are
    scaled by 255, others clipped to [0, 255]. Every other mode (1, CMYK, YCbCr, ...) goes through PIL.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    src = img.mode
    if src == mode and "transparency" not in img.info:
        return img
    if src.startswith("I;16") or src in ("I", "F"):
        img = _high_depth_to_l(img)
    elif src in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    elif src not in ("L", "RGB"):
        img = img.convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float single-channel image to 8-bit "L"."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        finite_max = float(np.nanmax(arr)) if arr.size else 0.0
        arr = arr * 255.0 if finite_max <= 1.0 else arr
    else:
        arr = arr.astype(np.float64)
        if img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------- datasets


class FashionMNIST(Dataset):
    """Fashion-MNIST from its original IDX files.

    Items are ``(PIL.Image of mode `mode`, 28x28, int label)``. ``images`` (N, 28, 28) uint8 and ``targets``
    (N,) int64 expose the raw arrays (e.g. for a fast raw-pixel kNN baseline).
    """

    FILES: dict[str, str] = {"train": "train", "test": "t10k"}

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", mode: str = "L", limit: int | None = None
    ) -> None:
        if split not in self.FILES:
            raise ValueError(f"Fashion-MNIST split must be one of {sorted(self.FILES)}, got {split!r}")
        _check_limit(limit)
        self.root = Path(root)
        self.split = split
        self.mode = mode
        self.classes = list(FASHION_MNIST_CLASSES)
        prefix = self.FILES[split]
        images = read_idx(self._find(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(self._find(f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{self.root}: inconsistent Fashion-MNIST {split} files: images {images.shape}, labels {labels.shape}"
            )
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images: np.ndarray = images.astype(np.uint8, copy=False)
        self.targets: np.ndarray = labels.astype(np.int64)

    def _find(self, name: str) -> Path:
        for candidate in (self.root / f"{name}.gz", self.root / name):
            if candidate.is_file():
                return candidate
        missing = self.root / f"{name}.gz"
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {missing} (nor {self.root / name}); {FASHION_MNIST_HINT}"
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self.images[index])
        return to_mode(img, self.mode), int(self.targets[index])


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
      These counters are per process (each DataLoader worker keeps its own).

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: no image file under ``root``.
    """

    def __init__(self, root: str | os.PathLike[str], mode: str = "RGB", limit: int | None = None) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        _check_limit(limit)
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

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
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
                return self.load(path), label
            except Exception as e:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, ValueError, EOFError, ...
                self._bad.add(i)
                self.bad_paths.append(path)
                self.num_skipped += 1
                logger.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
        raise RuntimeError(f"no readable image under {self.root}: all {n} files failed to load")


class SyntheticImages(Dataset):
    """``n`` deterministic random images of side ``size`` with labels ``index % 10``.

    Each image depends only on ``(seed, index)``: uniform noise in [0, 128) plus a bright horizontal band
    whose position encodes the label, so a smoke-test probe can beat chance.
    """

    def __init__(self, n: int = 256, size: int = 28, channels: int = 1, seed: int = 0) -> None:
        if n <= 0 or size <= 0:
            raise ValueError(f"n and size must be positive, got n={n}, size={size}")
        self.n, self.size, self.channels, self.seed = n, size, channels, seed
        self.mode = _mode_for(channels)
        self.classes = [str(c) for c in range(10)]
        self.targets = [i % 10 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        index %= self.n
        label = index % 10
        rng = np.random.default_rng([self.seed, index])
        shape = (self.size, self.size) if self.channels == 1 else (self.size, self.size, 3)
        arr = rng.integers(0, 128, size=shape, dtype=np.uint8)
        band = max(1, self.size // 10)
        start = label * (self.size - band) // 9
        arr[start : start + band] += 127
        return Image.fromarray(arr), label


class ImageDataset(Dataset):
    """Apply ``transform`` to the images of a raw ``(PIL.Image, label)`` data set.

    Items are ``(transform(image), int label)``, with the transforms of this module a float32 (C, S, S) tensor.
    """

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return load_image(self.base[index], self.transform)

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.base, "classes", []))

    @property
    def targets(self) -> Sequence[int]:
        return getattr(self.base, "targets")

    @property
    def num_skipped(self) -> int:
        return int(getattr(self.base, "num_skipped", 0))

    @property
    def bad_paths(self) -> list[Path]:
        return list(getattr(self.base, "bad_paths", []))


def load_image(sample: tuple[Image.Image, int], transform: Callable[[Image.Image], Tensor]) -> tuple[Tensor, int]:
    """Turn one raw ``(PIL.Image, label)`` item into ``(transform(image), int label)``."""
    img, label = sample
    return transform(img), int(label)


# ----------------------------------------------------------------------------------------- transforms


class ConvertMode:
    """Transform converting any PIL image to ``mode`` with :func:`to_mode` (picklable for DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_mode(img, self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def pretrain_transform(cfg: ImageDataConfig) -> T.Compose:
    """Pretraining view: RandomResizedCrop (bicubic) + optional horizontal flip + ToTensor + Normalize.

    Randomness comes from torch's global RNG: seed it (``torch.manual_seed``) per sample for determinism.
    Output: float32 (channels, image_size, image_size).
    """
    mean, std = cfg.channel_stats()
    ops: list[Any] = [
        ConvertMode(cfg.mode),
        T.RandomResizedCrop(
            cfg.image_size, scale=tuple(cfg.crop_scale), interpolation=T.InterpolationMode.BICUBIC
        ),
    ]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def eval_transform(cfg: ImageDataConfig) -> T.Compose:
    """Deterministic evaluation view: Resize (short side, bicubic) + CenterCrop + ToTensor + Normalize.

    Output: float32 (channels, image_size, image_size).
    """
    mean, std = cfg.channel_stats()
    return T.Compose(
        [
            ConvertMode(cfg.mode),
            T.Resize(cfg.image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(cfg.image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


# -------------------------------------------------------------------------------------------- builder


def build_image_dataset(
    cfg: ImageDataConfig, split: str | None = None, transform: Callable[[Image.Image], Tensor] | None = None
) -> Dataset:
    """Build the data set of ``split`` (default ``cfg.split``), keeping only the first ``cfg.limit`` samples.

    Without ``transform`` items are raw ``(PIL.Image in cfg.mode, int label)``; with one, the data set is an
    :class:`ImageDataset` whose items are ``(transform(image), int label)``.

    For ``folder``, ``root/split`` is used when it is a directory, else ``root`` itself. For ``synthetic``,
    the seed is derived from the split name so that train and test images differ.
    """
    split = cfg.split if split is None else split
    if cfg.source == "fashion_mnist":
        base: Dataset = FashionMNIST(cfg.root, split, mode=cfg.mode, limit=cfg.limit)
    elif cfg.source == "folder":
        root = Path(cfg.root)
        if split and (root / split).is_dir():
            root = root / split
        base = ImageFolder(root, mode=cfg.mode, limit=cfg.limit)
    elif cfg.source == "synthetic":
        n = cfg.synthetic_size if cfg.limit is None else min(cfg.synthetic_size, cfg.limit)
        base = SyntheticImages(n, cfg.image_size, cfg.channels, seed=zlib.crc32(split.encode()))
    else:
        raise ValueError(f"unknown image data source {cfg.source!r}; valid sources: {', '.join(SOURCES)}")
    logger.info("image data: source=%s split=%s samples=%d", cfg.source, split, len(base))  # type: ignore[arg-type]
    return base if transform is None else ImageDataset(base, transform)


__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "UNLABELED",
    "ConvertMode",
    "FashionMNIST",
    "ImageDataConfig",
    "ImageDataset",
    "ImageFolder",
    "SyntheticImages",
    "build_image_dataset",
    "eval_transform",
    "load_image",
    "pretrain_transform",
    "read_idx",
    "to_mode",
]
