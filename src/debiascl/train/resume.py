"""Mid-epoch resume for a DataLoader: skip the batches an interrupted epoch already consumed.

The training samplers (``EpochShuffleSampler``, ``DistributedSampler``) draw each epoch's order
from ``(seed, epoch)`` alone, so the order of a resumed epoch is the order of the interrupted
one; :class:`SkipFirstSampler` drops its first ``batches x batch_size`` indices, once, without
reading the images behind them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from torch.utils.data import BatchSampler, DataLoader, Sampler


class SkipFirstSampler(Sampler[int]):
    """Wraps a sampler; the next iteration (only) starts after its first ``n`` indices."""

    def __init__(self, base: Sampler[int]) -> None:
        self.base = base
        self._skip = 0

    def skip_next(self, n: int) -> None:
        self._skip = max(0, int(n))

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.base, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return itertools.islice(iter(self.base), skip, None)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


def make_resumable(loader: DataLoader) -> SkipFirstSampler:
    """Insert a :class:`SkipFirstSampler` under ``loader``'s batch sampler and return it.

    ``len(loader)`` is unchanged (the full epoch); a skipping epoch yields fewer batches.
    """
    batch_sampler = loader.batch_sampler
    if not isinstance(batch_sampler, BatchSampler):
        raise TypeError("make_resumable needs a DataLoader built with batch_size and a sampler")
    if isinstance(batch_sampler.sampler, SkipFirstSampler):
        return batch_sampler.sampler
    wrapper = SkipFirstSampler(batch_sampler.sampler)
    batch_sampler.sampler = wrapper
    return wrapper
