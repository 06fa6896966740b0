"""Deterministic, resumable data feeding for any modality.

Every example is a function of (seed, epoch, index) only: the per-sample RNG (augmentation and mask) is derived
from those three numbers, so masks and crops are identical whatever the number of workers, processes or restarts
(data2vec 2.0's ``MaskSeed(seed, update, id)`` idea). The batch sampler is infinite, reshuffles every epoch, can
start at any micro-batch (resume) and shards every global batch across ranks.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unimim.core.batch import Batch


class ExampleSource(Protocol):
    """A modality's pretraining dataset: ``example(i, rng)`` builds one training example (inputs + masks, in the
    DataLoader worker); ``collate(examples)`` stacks examples into a :class:`~unimim.core.batch.Batch`."""

    def __len__(self) -> int: ...

    def example(self, index: int, rng: np.random.Generator) -> dict[str, Any]: ...

    def collate(self, examples: list[dict[str, Any]]) -> Batch: ...


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededDataset(Dataset):
    """Wraps an :class:`ExampleSource`; items are keyed by ``(epoch, index)``.

    Inside ``__getitem__`` torch's global RNG (used by torchvision transforms) is forked and seeded from the key,
    so the caller's RNG stream is untouched and the example is reproducible.
    """

    def __init__(self, source: ExampleSource, seed: int) -> None:
        self.source = source
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            return self.source.example(index, np.random.default_rng(s))


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite stream of micro-batches of ``(epoch, index)`` keys.

    Global batch g (g = 0, 1, ...) holds positions [g*B*W, (g+1)*B*W) of the epoch's permutation
    (B = per-rank batch, W = world size); rank r takes its r-th slice of B. Incomplete tail batches are dropped.
    ``start`` is the first global batch to yield (= micro-batches already consumed).
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.per_epoch = num_examples // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ValueError(
                f"dataset of {num_examples} examples is smaller than one global batch "
                f"({batch_size} x {world_size} processes); lower train.batch_size or add data"
            )

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = self.start
        epoch, perm = -1, None
        while True:
            e, b = divmod(g, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            lo = (b * self.world_size + self.rank) * self.batch_size
            yield [(epoch, int(i)) for i in perm[lo : lo + self.batch_size]]
            g += 1

    def __len__(self) -> int:  # an infinite sampler: length of one epoch, for information
        return self.per_epoch


def _ignore_stop_signals(worker_id: int) -> None:
    """Data workers leave SIGINT / SIGTERM to the main process (a Ctrl-C or scancel reaches the whole process group),
    which finishes its step and checkpoints with their batches; they exit when it shuts them down or dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(source: ExampleSource, *, batch_size: int, seed: int, start: int = 0, num_workers: int = 0,
                collate_fn: Callable | None = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    """An infinite DataLoader over ``source`` starting at micro-batch ``start``."""
    sampler = ResumableBatchSampler(len(source), batch_size, seed=seed, start=start, rank=rank,
                                    world_size=world_size)
    return DataLoader(
        SeededDataset(source, seed),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # worker base seeds must not draw from the global RNG
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
