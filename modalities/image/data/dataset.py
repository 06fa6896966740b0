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

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from modalities.image.data.folder import IMAGE_EXTENSIONS, UNLABELED, ImageFolder, read_sample
from modalities.image.data.idx import FASHION_MNIST_CLASSES, FashionMNIST, read_idx
from modalities.image.data.modes import ConvertMode, mode_for, to_mode
from modalities.image.data.views import ViewsConfig

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("fashion_mnist", "folder", "synthetic")

# --------------------------------------------------------------------------------------------- config


@dataclass
class ImageDataConfig:
    """Where images come from and how they are turned into tensors.

    YAML recipes map onto this dataclass, so tuple fields may arrive as lists; they are normalised to tuples.
    ``mean``/``std`` of length 1 are broadcast to every channel when ``channels == 3``.
    """

    source: Literal["fashion_mnist", "folder", "synthetic"] = "fashion_mnist"
    root: str = "/usr/share/datasets/fashion-mnist"  # IDX dir for fashion_mnist, ImageFolder root for folder
    split: str | None = "train"  # fashion_mnist: train | test; folder: the subdirectory of root (null: root itself)
    image_size: int = 28  # output side in pixels
    channels: int = 1  # 1 ("L") or 3 ("RGB"); every image is converted to this mode
    crop_scale: tuple[float, float] = (0.35, 1.0)  # RandomResizedCrop scale for pretraining views
    hflip: bool = True
    # ColorJitter(b, b, b) (brightness, contrast, saturation; no hue) on every pretraining view before the crop, as
    # BEiT and data2vec 1.0 vision (both 0.4); 0 = off
    color_jitter: float = 0.0
    mean: tuple[float, ...] = (0.2860,)  # Fashion-MNIST train mean/std
    std: tuple[float, ...] = (0.3530,)
    synthetic_size: int = 256  # number of random images for source=synthetic
    limit: int | None = None  # use only the first `limit` samples (smoke tests)
    views: ViewsConfig = field(default_factory=ViewsConfig)  # multi-view examples (iBOT); off by default

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
        if not self.color_jitter >= 0:
            raise ValueError(f"color_jitter must be >= 0, got {self.color_jitter}")
        if self.synthetic_size <= 0:
            raise ValueError(f"synthetic_size must be positive, got {self.synthetic_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be None or >= 1, got {self.limit}")

    @property
    def mode(self) -> str:
        """PIL mode every image is converted to: "L" or "RGB"."""
        return mode_for(self.channels)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std), each with exactly ``channels`` values."""
        return _broadcast(self.mean, self.channels), _broadcast(self.std, self.channels)


def _broadcast(values: Sequence[float], n: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    return values * n if len(values) == 1 else values



class SyntheticImages(Dataset):
    """``n`` deterministic random images of side ``size`` with labels ``index % 10``.

    Each image depends only on ``(seed, index)``: uniform noise in [0, 128) plus a bright horizontal band
    whose position encodes the label, so a smoke-test probe can beat chance.
    """

    def __init__(self, n: int = 256, size: int = 28, channels: int = 1, seed: int = 0) -> None:
        if n <= 0 or size <= 0:
            raise ValueError(f"n and size must be positive, got n={n}, size={size}")
        self.n, self.size, self.channels, self.seed = n, size, channels, seed
        self.mode = mode_for(channels)
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

    def read(self, index: int) -> tuple[Tensor, int, int]:
        """(transformed image, label, index actually read): see :func:`~modalities.image.data.folder.read_sample`."""
        read = getattr(self.base, "read", None)
        image, label, j = read(index) if read is not None else (*self.base[index], index % len(self))
        x, label = load_image((image, label), self.transform)
        return x, label, j

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


def pretrain_transform(cfg: ImageDataConfig) -> T.Compose:
    """Pretraining view: optional ColorJitter + RandomResizedCrop (bicubic) + optional horizontal flip + ToTensor +
    Normalize. The jitter comes first, as in BEiT / data2vec_vision ``DataAugmentationForBEiT`` (jitter, flip, crop;
    the flip and the crop commute in distribution).

    Randomness comes from torch's global RNG: seed it (``torch.manual_seed``) per sample for determinism.
    Output: float32 (channels, image_size, image_size).
    """
    mean, std = cfg.channel_stats()
    ops: list[Any] = [ConvertMode(cfg.mode)]
    if cfg.color_jitter > 0:
        ops.append(T.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
    ops += [
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


def split_folder(root: str | Path, split: str) -> Path:
    """``root/split``, which must be a directory: never a silent fall-back to ``root`` (whose class folders would
    then be the split folders). A missing one is a :class:`FileNotFoundError` naming the folders found."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    path = root / split
    if not path.is_dir():
        found = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
        raise FileNotFoundError(f"image folder {root} has no split folder {split!r} (folders found: "
                                f"{', '.join(found) if found else 'none'}); a labelled folder holds train/ and val/ "
                                "(or test/), each with one folder per class (data.split: null reads root itself)")
    return path


def build_image_dataset(
    cfg: ImageDataConfig, split: str | None = None, transform: Callable[[Image.Image], Tensor] | None = None
) -> Dataset:
    """Build the data set of ``split`` (default ``cfg.split``), keeping only the first ``cfg.limit`` samples.

    Without ``transform`` items are raw ``(PIL.Image in cfg.mode, int label)``; with one, the data set is an
    :class:`ImageDataset` whose items are ``(transform(image), int label)``.

    For ``folder``, the images of ``root/split`` (``split`` None: ``root`` itself); a split folder that does not
    exist is a :class:`FileNotFoundError` naming the folders found. For ``synthetic``, the seed is derived from the
    split name so that train and test images differ.
    """
    split = cfg.split if split is None else split
    if cfg.source == "fashion_mnist":
        base: Dataset = FashionMNIST(cfg.root, split or "train", mode=cfg.mode, limit=cfg.limit)
    elif cfg.source == "folder":
        root = Path(cfg.root) if split is None else split_folder(cfg.root, split)
        base = ImageFolder(root, mode=cfg.mode, limit=cfg.limit)
    elif cfg.source == "synthetic":
        n = cfg.synthetic_size if cfg.limit is None else min(cfg.synthetic_size, cfg.limit)
        base = SyntheticImages(n, cfg.image_size, cfg.channels, seed=zlib.crc32((split or "train").encode()))
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
    "read_sample",
    "split_folder",
    "to_mode",
]
