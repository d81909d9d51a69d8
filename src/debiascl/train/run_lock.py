"""One writer per run directory: an exclusive ``flock`` held for the run's lifetime.

Two runs writing into the same directory at once (a seed sweep with the default
``output_dir``) would interleave their epochs in ``metrics.jsonl`` and overwrite each other's
checkpoints. :class:`RunDirLock` takes a non-blocking exclusive lock on ``<run_dir>/.lock``; a
second writer gets :class:`RunDirInUseError` at once. The kernel drops the lock when the holder
exits however it exits (SIGKILL included), so a stale lock file never blocks a later run.
"""

from __future__ import annotations

import os
from pathlib import Path

from debiascl.errors import CheckpointError

LOCK_NAME = ".lock"


class RunDirInUseError(CheckpointError):
    """Another live process holds the run directory."""


class RunDirLock:
    """Exclusive lock on a run directory; use as a context manager or acquire()/release()."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (creating the directory) or raise :class:`RunDirInUseError`."""
        if self._fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CheckpointError(
                f"cannot write to run directory {self.path.parent}: {err.strerror or err}; "
                "choose a writable --run-dir (or output_dir)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirInUseError(
                f"run directory {self.path.parent} is in use by another run{holder}; wait for "
                "it to finish, or choose another --run-dir (or output_dir/name)"
            ) from None
        except OSError:  # a filesystem without flock support: run unlocked
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
