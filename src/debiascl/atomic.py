"""Crash-safe file writes: write to a temporary file, flush + fsync, then rename.

A reader therefore sees either the old file or the complete new one, never a torn write, and a
full disk (``ENOSPC``) or any other write error leaves the previous file intact and removes the
temporary file. A process killed mid-write (SIGKILL, power loss) can leave a hidden
``.<name>.<random>.tmp`` file behind; :func:`remove_stale_temp_files` deletes those when a run
starts again.

Fault injection (tests and ``scripts/fault_injection.py`` only): when the environment variable
``DEBIASCL_FAULT_WRITE_DELAY`` holds a number of seconds, every write sleeps that long between
the fsync and the rename, so a kill can be aimed at the moment the new file is complete on disk
but not yet visible under its final name.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from debiascl.errors import TrainingError

FAULT_DELAY_ENV = "DEBIASCL_FAULT_WRITE_DELAY"
_TMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once at import, in the importing thread.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _fault_delay() -> None:
    delay = os.environ.get(FAULT_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def _describe(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on device"
    if err.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return err.strerror or str(err)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temporary file next to ``path`` and atomically rename it.

    The new file gets the permissions a plain ``open`` would give (``0o666`` minus the umask)
    rather than ``mkstemp``'s private ``0o600``.

    Raises:
        TrainingError: the write failed (disk full, quota, I/O error); ``path`` is unchanged and
            no temporary file is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainingError(
            f"cannot create directory {path.parent}: {_describe(err)}; choose a writable "
            "output_dir or --run-dir"
        ) from err
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _fault_delay()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise TrainingError(
            f"could not write {path}: {_describe(err)}; the previous file is intact "
            "(free disk space or choose another output_dir)"
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def is_temp_file(path: Path) -> bool:
    """True for the hidden temporary files :func:`atomic_write` creates."""
    return path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX)


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temporary files left in ``directory`` by a writer that was killed; returns them.

    Call only when no other process is writing into ``directory`` (e.g. at the start of a run).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if entry.is_file() and is_temp_file(entry):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
