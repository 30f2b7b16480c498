"""Global batches in a reproducible order, and the generators their randomness comes from.

The data order of epoch e is a permutation drawn from (seed, 1, e); everything an objective draws
for the k-th global batch (times, noise, label dropout) comes from a generator seeded by
(seed, 2, k). A resumed run therefore draws exactly what an uninterrupted one would, and under DDP
each rank takes its rows of the same global batch, so N processes compute what one computes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from unnoise.objectives.base import Batch


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (NumPy's SeedSequence decorrelates them)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]))


class Batches:
    """Index batches of a data set of n examples; `position` (batches drawn so far) is the resume state."""

    def __init__(self, n: int, batch_size: int, seed: int, position: int = 0):
        if n < batch_size:
            raise ValueError(f"the data set has {n} examples, fewer than batch_size {batch_size}")
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self._epoch, self._perm = -1, None

    def _order(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=seeded_generator(self.seed, 1, epoch))
        return self._perm

    def next(self) -> tuple[Tensor, torch.Generator]:
        """The next global batch's example indices (B,) and the generator of its randomness."""
        per_epoch = self.n // self.batch_size  # drop the ragged end of each epoch
        epoch, k = divmod(self.position, per_epoch)
        index = self._order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        self.position += 1
        return index, seeded_generator(self.seed, 2, self.position)


def take(batch: Batch, rows: slice, device: torch.device) -> Batch:
    """This rank's rows of a global batch, on its device."""
    return {key: None if value is None else value[rows].to(device) for key, value in batch.items()}
