"""How a shard epoch is ordered and split (see :mod:`debiascl.data.shards`): the shard
permutation of an epoch, near-equal contiguous parts for ranks and workers, and which batches a
round-robin loader has taken from its workers (the resume position)."""

from __future__ import annotations

import numpy as np

from debiascl.errors import DataError


def epoch_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The shard permutation of ``epoch`` (identical on every rank and worker)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.permutation(num_shards)


def split_range(total: int, part: int, parts: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``part`` of ``parts`` near-equal contiguous parts of ``total``."""
    base, extra = divmod(total, parts)
    start = part * base + min(part, extra)
    return start, start + base + (1 if part < extra else 0)


def delivered_per_worker(counts: list[int], consumed: int) -> tuple[list[int], int]:
    """Batches each worker has delivered after ``consumed`` batches taken round-robin.

    ``counts[w]`` is worker w's number of batches; a ``DataLoader`` visits the workers in order,
    skipping the exhausted ones. Returns the per-worker counts and the worker it visits next.
    """
    done = [0] * len(counts)
    left, last = consumed, len(counts) - 1
    while left > 0:
        active = [w for w, c in enumerate(counts) if done[w] < c]
        if not active:
            raise DataError(f"position is past the end of the epoch ({sum(counts)} batches)")
        rounds = min(left // len(active), min(counts[w] - done[w] for w in active))
        if rounds == 0:
            for w in active[:left]:
                done[w] += 1
            last = active[left - 1]
            break
        for w in active:
            done[w] += rounds
        left -= rounds * len(active)
        last = active[-1]
    return done, (last + 1) % len(counts)
