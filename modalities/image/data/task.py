"""The labelled image task of fine-tuning and probes: Fashion-MNIST (default) or a user's folder of class folders.

    task.source: fashion_mnist   train / test of the IDX files in task.root
    task.source: folder          task.root/train/<class>/* and task.root/val/<class>/* (or test/)
    task.source: synthetic       the deterministic random images of smoke tests (data.synthetic_size per split)
    task.source: null (default)  the run's own data.source, data.root and data.limit (Fashion-MNIST by default)

Image size, channels and normalisation are the run's (``data``, checked against ``adapter``). Training transform
(fine-tuning): RandomResizedCrop (bicubic) + horizontal flip + optional RandAugment (timm's
``rand_augment_transform``, e.g. ``rand-m9-mstd0.5-inc1``) + ToTensor + Normalize + optional random erasing (timm's
``RandomErasing``), the order of timm's ``create_transform`` used by MAE / BEiT fine-tuning; evaluation and probes:
the deterministic resize + centre crop. A split that does not exist is a clear error naming the folders found.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from modalities.image.data.dataset import ImageDataConfig, ImageDataset, SyntheticImages, eval_transform, split_folder
from modalities.image.data.folder import UNLABELED, ImageFolder
from modalities.image.data.idx import FashionMNIST
from modalities.image.data.modes import ConvertMode
from unimim.core.batch import Batch
from unimim.eval.task import LabelledTask

log = logging.getLogger(__name__)


@dataclass
class ImageTaskConfig:
    source: Literal["fashion_mnist", "folder", "synthetic"] | None = None  # None: the run's data.source
    root: str | None = None  # IDX directory, or the folder holding train/ and val/ (test/); None: the run's data.root
    test_split: str | None = None  # folder: the evaluation split folder (None: val/, else test/)
    name: str | None = None        # the task's directory under RUN_DIR/finetune/ (None: fashion_mnist / the folder's
                                   # name)
    limit_train: int | None = None  # only the first N training / test images (CPU-scale recipes, tests)
    limit_test: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale of fine-tuning (timm / MAE: 0.08-1)
    hflip: bool = True
    rand_augment: str | None = None  # a timm RandAugment string, e.g. rand-m9-mstd0.5-inc1 (MAE); None: off
    random_erasing: float = 0.0      # probability of timm's RandomErasing (mode pixel; MAE --reprob 0.25)

    def __post_init__(self) -> None:
        self.root = None if self.root is None else str(self.root)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"task.crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_scale}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"task.{name} must be >= 1 or null, got {value}")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"task.random_erasing must lie in [0, 1], got {self.random_erasing}")
        if self.rand_augment is not None and not self.rand_augment.startswith("rand"):
            raise ValueError(f"task.rand_augment must be a timm RandAugment string such as 'rand-m9-mstd0.5-inc1', "
                             f"got {self.rand_augment!r}")
        if self.test_split is not None and self.source not in ("folder", None):
            raise ValueError("task.test_split names a split folder: it is for task.source=folder")


def train_transform(task: ImageTaskConfig, data: ImageDataConfig) -> T.Compose:
    """Fine-tuning view: (C, S, S) float32, from torch's RNG (seeded per example by the loader) and, for
    RandAugment, Python's ``random`` (seeded the same way by the fine-tune source)."""
    mean, std = data.channel_stats()
    ops: list[Any] = [ConvertMode(data.mode),
                      T.RandomResizedCrop(data.image_size, scale=tuple(task.crop_scale),
                                          interpolation=T.InterpolationMode.BICUBIC)]
    if task.hflip:
        ops.append(T.RandomHorizontalFlip())
    if task.rand_augment:
        from timm.data import rand_augment_transform

        fill = tuple(round(255 * m) for m in mean)
        hparams = {"translate_const": int(data.image_size * 0.45), "img_mean": fill[0] if data.channels == 1 else fill}
        try:
            ops.append(rand_augment_transform(task.rand_augment, hparams))
        except (AssertionError, KeyError, ValueError) as e:
            raise ValueError(f"task.rand_augment={task.rand_augment!r} is not a valid timm RandAugment string "
                             f"({e})") from None
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if task.random_erasing > 0:
        from timm.data.random_erasing import RandomErasing

        ops.append(RandomErasing(task.random_erasing, mode="pixel", device="cpu"))
    return T.Compose(ops)


class _Relabelled(Dataset):
    """(image, label) items with the label mapped through ``mapping`` (a test split's class indices -> the training
    split's)."""

    def __init__(self, base: Dataset, mapping: Sequence[int]) -> None:
        self.base, self.mapping = base, list(mapping)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[index]
        return image, self.mapping[label]


def _labelled_folder(path: Path, mode: str, limit: int | None, min_classes: int = 1) -> ImageFolder:
    folder = ImageFolder(path, mode=mode, limit=limit)
    loose = sum(1 for _, label in folder.samples if label == UNLABELED)
    if loose:
        raise ValueError(f"{path}: {loose} image files lie directly in the split folder; a labelled split holds one "
                         "folder per class")
    if len(folder.classes) < min_classes:
        raise ValueError(f"{path}: a classification task needs at least {min_classes} class folders, found "
                         f"{folder.classes or 'none'}")
    return folder


def _folder_splits(task: ImageTaskConfig, root: Path, mode: str) -> tuple[Dataset, Dataset, list[str], str]:
    train = _labelled_folder(split_folder(root, "train"), mode, task.limit_train, min_classes=2)
    if task.test_split is not None:
        test_dir = split_folder(root, task.test_split)
    else:
        present = [s for s in ("val", "test") if (root / s).is_dir()]
        test_dir = split_folder(root, present[0] if present else "val")
    test = _labelled_folder(test_dir, mode, task.limit_test)
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"{test_dir} has class folders that {root / 'train'} lacks: {', '.join(unknown)}")
    test_set: Dataset = test
    if test.classes != train.classes:  # a test split without some class: its indices follow the training split's
        test_set = _Relabelled(test, [train.class_to_idx[c] for c in test.classes])
    return train, test_set, list(train.classes), task.name or root.resolve().name


def collate(items: list[tuple[torch.Tensor, int]]) -> Batch:
    """(image (C, S, S), label) items -> Batch(inputs (B, C, S, S), labels (B,))."""
    return Batch(inputs=torch.stack([x for x, _ in items]), labels=torch.tensor([y for _, y in items]))


def build_task(task: ImageTaskConfig, cfg: Any, train_augment: bool) -> LabelledTask:
    """The labelled image task of ``cfg.task`` at the run's image size, channels and normalisation (``cfg.data``)."""
    from modalities.image.data.source import check_consistency

    data: ImageDataConfig = cfg.data
    check_consistency(data, cfg.adapter)
    source = task.source or data.source
    root = task.root if task.root is not None else (data.root if task.source in (None, data.source) else None)
    if root is None and source != "synthetic":
        raise ValueError(f"task.source={source} needs task.root (the run's data.source is {data.source!r})")
    if task.test_split is not None and source != "folder":
        raise ValueError(f"task.test_split names a split folder: it is for a folder task, not {source!r}")
    if task.source is None and data.limit is not None:  # the run's own data, as far as it reads it
        task = dataclasses.replace(task, limit_train=task.limit_train or data.limit,
                                   limit_test=task.limit_test or data.limit)
    if source == "fashion_mnist":
        train: Dataset = FashionMNIST(root, "train", mode=data.mode, limit=task.limit_train)
        test: Dataset = FashionMNIST(root, "test", mode=data.mode, limit=task.limit_test)
        classes, name = list(train.classes), task.name or "fashion_mnist"
    elif source == "synthetic":
        def synthetic(split: str, limit: int | None) -> Dataset:
            n = data.synthetic_size if limit is None else min(limit, data.synthetic_size)
            return SyntheticImages(n, data.image_size, data.channels, seed=zlib.crc32(split.encode()))

        train, test = synthetic("train", task.limit_train), synthetic("test", task.limit_test)
        classes, name = list(train.classes), task.name or "synthetic"
    else:
        train, test, classes, name = _folder_splits(task, Path(root), data.mode)
    evaluation = eval_transform(data)
    log.info("image task %s: %d training and %d test images, %d classes", name, len(train), len(test), len(classes))
    return LabelledTask(name=name, kind="classification",
                        train=ImageDataset(train, train_transform(task, data) if train_augment else evaluation),
                        test=ImageDataset(test, evaluation), collate=collate, classes=classes)
