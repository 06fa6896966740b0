"""A labelled task's training split as an :class:`~unimim.train.data.ExampleSource`, so that fine-tuning runs on
the pretraining loader: every example a function of (seed, epoch, index), whatever the workers or restarts."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from unimim.core.batch import Batch


class TaskSource:
    """``example(i, rng)`` -> the dataset's item ``i``; ``collate`` -> the task's Batch.

    The loader seeds torch's RNG per example (crops, flips); Python's ``random`` and NumPy's global RNG (timm's
    RandAugment draws its operations from them) are seeded from ``rng`` here and restored afterwards, so those
    draws are reproducible too and the caller's streams are untouched.
    """

    def __init__(self, dataset: Dataset, collate: Callable[[list[Any]], Batch]) -> None:
        self.dataset = dataset
        self._collate = collate

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def example(self, index: int, rng: np.random.Generator) -> Any:
        seed = int(rng.integers(2**32))
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def collate(self, items: list[Any]) -> Batch:
        return self._collate(items)
