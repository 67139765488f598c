"""Deterministic data order for training and exact sharding for evaluation.

Training: the global order is a fixed function of (seed, epoch): a permutation per epoch, cut into global
batches of ``world_size * batch_size``; rank r takes slice r of each global batch. Every sample also gets its own
augmentation seed derived from (seed, global position), and :class:`SeededDataset` seeds ``random``,
``numpy.random`` and ``torch`` with it before the transform runs. Hence the augmented batch at iteration i is
the same for 1 or N processes, for any number of loader workers, and after a resume at iteration i.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["TrainBatchSampler", "InferenceSampler", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, position: int) -> int:
    """A 32-bit seed for the sample at a global position of the training stream."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, position]).generate_state(1)[0])


class TrainBatchSampler(Sampler):
    """Yields this rank's micro-batches of ``(dataset index, sample seed)`` from micro-batch ``start``."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start: int = 0, total: int | None = None):
        if size <= 0:
            raise ValueError("training set is empty")
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world_size
        self.seed, self.start, self.total = seed, start, total
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            self._perms = {epoch: torch.randperm(self.size, generator=g).numpy()}
        return self._perms[epoch]

    def global_batch(self, it: int) -> list[int]:
        """Global positions (in the infinite stream) of micro-batch ``it`` for this rank."""
        gb = self.batch_size * self.world
        first = it * gb + self.rank * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it = self.start
        while self.total is None or it < self.total:
            out = []
            for pos in self.global_batch(it):
                epoch, off = divmod(pos, self.size)
                out.append((int(self._perm(epoch)[off]), sample_seed(self.seed, pos)))
            yield out
            it += 1

    def __len__(self) -> int:
        return (self.total - self.start) if self.total is not None else 2**62


class InferenceSampler(Sampler):
    """Contiguous shard of ``range(size)`` for this rank: together the ranks cover every index exactly once."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        per = size // world_size
        extra = size % world_size
        begin = rank * per + min(rank, extra)
        self.indices = range(begin, begin + per + (1 if rank < extra else 0))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededDataset(Dataset):
    """Wraps a dataset so ``ds[(index, seed)]`` seeds every RNG the transforms may use, then loads ``index``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item):
        index, seed = item
        in_main = torch.utils.data.get_worker_info() is None
        if in_main:  # keep the training process's own random streams untouched (dropout, noise, ...)
            saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if in_main:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])
