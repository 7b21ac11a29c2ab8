"""A distributed sampler that can start part-way through an epoch, for exact resumption."""

from __future__ import annotations

import math
from typing import Iterator

from torch.utils.data import DistributedSampler, Sampler


class ResumableSampler(Sampler[int]):
    """This rank's indices for an epoch (from DistributedSampler), minus the batches already done."""

    def __init__(self, inner: DistributedSampler, batch_size: int):
        self.inner = inner
        self.batch_size = batch_size
        self.skip = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.inner) / self.batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Shuffle for `epoch` (every rank alike, DistributedSampler's seed + epoch); skip finished batches."""
        self.inner.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)
