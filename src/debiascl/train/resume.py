"""Mid-epoch resume for a DataLoader: skip the batches an interrupted epoch already consumed.

The training samplers (``EpochShuffleSampler``, ``DistributedSampler``) draw each epoch's order
from ``(seed, epoch)`` alone, so the order of a resumed epoch is the order of the interrupted
one. :class:`EpochStartSampler` starts epoch ``e`` at a given position of that order, without
reading the images before it.

The start position belongs to the *epoch*, not to one iteration: every iterator created while the
sampler is at epoch ``e`` starts at the same place. (A one-shot "skip on the next iteration" is
consumed by whichever code iterates first -- a progress bar that calls ``iter`` on the loader, a
multi-worker loader that prefetches -- and the real pass then re-trains the consumed batches.)
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import multiprocessing.util
import os
import signal
from collections.abc import Iterator
from typing import TypeVar

from torch.utils.data import BatchSampler, DataLoader, Sampler


class EpochStartSampler(Sampler[int]):
    """Wraps an epoch-seeded sampler; epoch ``e`` may start after its first ``n`` indices.

    Call :meth:`set_epoch` before each epoch (forwarded to the wrapped sampler) and
    :meth:`set_start` with the position the epoch resumes from (0 for a fresh epoch).
    """

    def __init__(self, base: Sampler[int]) -> None:
        self.base = base
        self.epoch = 0
        self._start: tuple[int, int] = (0, 0)  # (epoch, indices to skip in that epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        set_epoch = getattr(self.base, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)

    def set_start(self, epoch: int, n: int) -> None:
        """Every iteration of epoch ``epoch`` starts after its first ``n`` indices."""
        if n < 0:
            raise ValueError(f"start position must be >= 0, got {n}")
        self._start = (int(epoch), int(n))

    def start(self) -> int:
        """Indices skipped by an iteration of the current epoch."""
        epoch, n = self._start
        return n if epoch == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.start(), None)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


def make_resumable(loader: DataLoader) -> EpochStartSampler:
    """Insert an :class:`EpochStartSampler` under ``loader``'s batch sampler and return it.

    ``len(loader)`` is unchanged (the full epoch); a resumed epoch yields fewer batches. A loader
    over streamed shards gets a :class:`~debiascl.data.shard_source.StreamStart` instead (the
    same methods; the stream restarts each worker at its own offset).
    """
    from debiascl.data.shards import ShardStream

    if isinstance(loader.dataset, ShardStream):
        from debiascl.data.shard_source import StreamStart

        return StreamStart(loader)  # type: ignore[return-value]
    batch_sampler = loader.batch_sampler
    if not isinstance(batch_sampler, BatchSampler):
        raise TypeError("make_resumable needs a DataLoader built with batch_size and a sampler")
    if isinstance(batch_sampler.sampler, EpochStartSampler):
        return batch_sampler.sampler
    wrapper = EpochStartSampler(batch_sampler.sampler)
    batch_sampler.sampler = wrapper
    return wrapper


# ------------------------------------------------------------------ pre-emption and workers
#: Signals that ask a run to checkpoint and stop (cluster pre-emption; SLURM ``--signal``).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of training loaders: workers leave pre-emption to the main process.

    SLURM (and ``kill -TERM -<pgid>``) signal the whole process group, data-loader workers
    included. A worker that dies of SIGTERM takes the run down with a traceback before the main
    process can checkpoint; an ignoring worker keeps serving batches until the main process
    stops at the next step boundary and shuts it down. The main process blocks these signals
    while it starts workers (:func:`stop_signals_blocked`), so a signal in that window stays
    pending until the worker ignores it (it is then discarded) instead of killing it.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _kill_daemonic_children() -> None:
    """At interpreter exit multiprocessing terminates daemonic children with SIGTERM and joins
    them; loader workers ignore SIGTERM (:func:`ignore_stop_signals`), so a worker left behind
    by an error would block the exit forever. Kill them first (this handler is registered after
    multiprocessing's, so it runs before it)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_daemonic_children)
_exit_hook_pid: int | None = None
_Self = TypeVar("_Self", bound="LoaderWorkersMixin")


def kill_workers_at_exit() -> None:
    """Make :func:`_kill_daemonic_children` run at the exit of this process too when
    ``multiprocessing`` started it (a spawned or forked ``Process``, a pool worker).

    Such a process ends with ``os._exit`` after multiprocessing's own exit function, so atexit
    handlers never run there: that function runs the finalizers of priority >= 0, then SIGTERMs
    and joins the daemonic children -- and waits forever on a worker that ignores SIGTERM. A
    finalizer registered here (once per process; forking clears the registry) kills them first.
    """
    global _exit_hook_pid
    if _exit_hook_pid != os.getpid():
        _exit_hook_pid = os.getpid()
        multiprocessing.util.Finalize(None, _kill_daemonic_children, exitpriority=100)


def shutdown_workers(loader: DataLoader) -> None:
    """Stop the worker processes (and pin-memory thread) of ``loader``'s current iterator.

    A loader with ``persistent_workers`` keeps its iterator, and so its workers, as long as the
    loader itself lives; dropping one's own reference is not enough (a traceback may hold the
    iterator too). Idempotent; the loader stays usable: the next ``iter`` starts new workers.
    """
    iterator = getattr(loader, "_iterator", None)
    loader._iterator = None
    shutdown = getattr(iterator, "_shutdown_workers", None)  # what the iterator's __del__ calls
    if callable(shutdown):
        shutdown()


class LoaderWorkersMixin:
    """:meth:`close` and the context manager of :class:`~debiascl.train.trainer.Trainer`."""

    train_loader: DataLoader

    def close(self) -> None:
        """Shut down the training loader's worker processes (``data.num_workers > 0``).

        :meth:`fit` calls it when it returns or raises; call it (or use the trainer as a context
        manager) after iterating ``train_loader`` yourself. The trainer stays usable.
        """
        shutdown_workers(self.train_loader)

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class stop_signals_blocked:
    """Context manager: block :data:`STOP_SIGNALS` in this thread (children inherit the mask).

    A signal arriving meanwhile stays pending and is delivered when the block ends.
    """

    def __enter__(self) -> None:
        self._old = None
        if hasattr(signal, "pthread_sigmask"):
            self._old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old)
