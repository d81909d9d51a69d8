"""Checkpoint files: atomic writes, the last k and the best kept, reading with compatibility checks.

A checkpoint is one ``torch.save`` mapping written by the trainer (model, objective, optimiser,
position in training, RNG states, ...; see :mod:`debiascl.train.trainer`) with a ``fingerprint``
of the config parts that must match to resume and its ``fingerprint_parts`` (one hash each, so a
refusal names the differing part). This module reads and writes such files without knowing the
run config: callers pass the fingerprint they expect (:mod:`debiascl.compose.fingerprint`
computes it), so training (resume) and evaluation (weights only) share one reader.

Files in ``<run_dir>/checkpoints``:

* ``epoch{E:04d}-step{S:08d}.pt`` -- periodic checkpoints (``E`` = completed epochs, so a
  mid-epoch checkpoint of the first epoch is ``epoch0000-...``); the newest
  ``checkpoint.keep_last`` are kept.
* ``best.pt`` -- the end-of-epoch checkpoint with the lowest mean training loss so far (a hard
  link to, or copy of, that periodic file, so pruning never removes it).
* ``<stem>.<token>.rank<r>of<W>.shard`` -- the rows of sharded per-sample tables, one file per
  rank, listed by the checkpoint ``<stem>.pt`` (:mod:`debiascl.checkpoint.shards`).

Checkpoints hold only tensors and plain containers and are read with ``weights_only=True``: a
checkpoint file cannot run code when loaded.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from debiascl.atomic import atomic_write
from debiascl.checkpoint.legacy import SCALE_CHANGE
from debiascl.checkpoint.shards import prune_shards, shard_files_of
from debiascl.errors import CheckpointError

logger = logging.getLogger("debiascl.checkpoint")

#: Bumped when the layout of the saved mapping changes incompatibly.
FORMAT_VERSION = 2
BEST_NAME = "best.pt"
_NAME = re.compile(r"^epoch(\d+)-step(\d+)\.pt$")


def checkpoint_name(epoch: int, step: int) -> str:
    """``epoch`` = completed epochs, ``step`` = optimisation steps done."""
    return f"epoch{epoch:04d}-step{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Periodic checkpoints in ``directory``, oldest first (by step, then epoch)."""
    if not directory.is_dir():
        return []
    found = [((int(m[2]), int(m[1])), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a complete copy of ``src``, atomically (hard link where possible)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        return
    except OSError:
        tmp.unlink(missing_ok=True)
    with src.open("rb") as source:
        atomic_write(dst, lambda fh: shutil.copyfileobj(source, fh))


def save_checkpoint(
    state: dict[str, Any],
    directory: Path,
    name: str,
    keep_last: int,
    is_best: bool = False,
    shard_token: str | None = None,
) -> Path:
    """Write ``state`` atomically as ``directory/name``, update ``best.pt``, prune old ones.

    Pruning runs only after the new file is complete and renamed, so at every instant at least
    one complete checkpoint exists. A failed write (disk full) raises
    :class:`~debiascl.errors.TrainingError` and leaves every existing checkpoint untouched.

    ``shard_token``: the save whose table shard files (:mod:`~debiascl.checkpoint.shards`,
    already complete) belong to this checkpoint; ``best.pt`` gets links to them first, and
    shard files no checkpoint refers to any more are deleted.
    """
    directory = Path(directory)
    path = directory / name
    atomic_write(path, lambda fh: torch.save(state, fh))
    stem = Path(name).stem
    best_stem = Path(BEST_NAME).stem
    if is_best:
        for shard in shard_files_of(directory, stem, shard_token or ""):
            _link_or_copy(shard, directory / f"{best_stem}{shard.name[len(stem) :]}")
        _link_or_copy(path, directory / BEST_NAME)
    for old in list_checkpoints(directory)[:-keep_last]:
        if old != path:
            old.unlink(missing_ok=True)
    live = {stem: shard_token, **({best_stem: shard_token} if is_best else {})}
    prune_shards(directory, live)
    return path


def resolve_resume(resume: str, run_dir: Path) -> Path:
    """``latest`` -> newest checkpoint of ``run_dir``; ``best`` -> its ``best.pt``; or a path."""
    directory = Path(run_dir) / "checkpoints"
    if resume == "latest":
        found = list_checkpoints(directory)
        if not found:
            raise CheckpointError(
                f"--resume latest: no checkpoint in {directory}; start without --resume or pass "
                "a checkpoint path"
            )
        return found[-1]
    if resume == "best":
        path = directory / BEST_NAME
        if not path.is_file():
            raise CheckpointError(
                f"--resume best: {path} does not exist (it is written at the end of an epoch); "
                "use --resume latest"
            )
        return path
    path = Path(resume)
    if path.is_dir():
        raise CheckpointError(
            f"--resume {path} is a directory; pass a checkpoint file (.pt), 'latest' or 'best'"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass an existing .pt file, 'latest' or 'best'"
        )
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}); it may be truncated or "
            "not a checkpoint — resume from an earlier checkpoint"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "fingerprint" not in state:
        raise CheckpointError(
            f"{path} is not a debiascl checkpoint (no model/fingerprint entries); pass a file "
            "from <run_dir>/checkpoints"
        )
    return state


def _check(
    state: dict[str, Any],
    path: Path,
    expected_fingerprint: str | None,
    expected_parts: dict[str, str] | None,
) -> dict[str, Any]:
    saved = state.get("fingerprint")
    saved_parts = state.get("fingerprint_parts")
    if expected_fingerprint is not None:
        mismatch = saved != expected_fingerprint
        keys = set(expected_parts or {}) | set(saved_parts or {})
    else:  # only the parts given (evaluation: what the weights and sample ids depend on)
        keys = set(expected_parts or {})
        mismatch = isinstance(saved_parts, dict) and any(
            saved_parts.get(k) != v for k, v in (expected_parts or {}).items()
        )
    if mismatch:
        differing = ""
        names: list[str] = []
        if expected_parts is not None and isinstance(saved_parts, dict):
            names = sorted(k for k in keys if saved_parts.get(k) != expected_parts.get(k))
            if names:
                differing = f" (differs in: {', '.join(names)})"
        saved_model = (state.get("config") or {}).get("model") or {}
        scale_parts = not names or any(n.split(".")[0] in ("model", "loss") for n in names)
        if isinstance(saved_model, dict) and "logit_scale_init" in saved_model and scale_parts:
            differing += f"; it predates a change: {SCALE_CHANGE}"
        raise CheckpointError(
            f"checkpoint {path} was written by a run with a different config or data size"
            f"{differing}; resume with the config in the run's config.yaml or start a new run"
        )
    return state


def load_checkpoint(
    path: Path,
    expected_fingerprint: str | None = None,
    expected_parts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Read a checkpoint on CPU and check it belongs to this config and data size.

    With ``expected_fingerprint`` the whole fingerprint must match; with only ``expected_parts``
    only those parts are compared (what an evaluation depends on).

    Raises:
        CheckpointError: unreadable or truncated file, not a debiascl checkpoint, or written by
            a run with another config/data size (the message names the differing parts).
    """
    path = Path(path)
    return _check(_read(path), path, expected_fingerprint, expected_parts)


def load_for_resume(
    resume: str,
    run_dir: Path,
    expected_fingerprint: str | None = None,
    expected_parts: dict[str, str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Resolve ``resume`` and load it; ``latest`` falls back past unreadable files (warned).

    A checkpoint that fails the fingerprint check is never skipped: that is a user error.
    """
    if resume != "latest":
        path = resolve_resume(resume, run_dir)
        return path, load_checkpoint(path, expected_fingerprint, expected_parts)
    resolve_resume(resume, run_dir)  # raises when there is none
    unreadable: list[str] = []
    for path in reversed(list_checkpoints(Path(run_dir) / "checkpoints")):
        try:
            state = _read(path)
        except CheckpointError:
            unreadable.append(path.name)
            logger.warning("checkpoint %s is unreadable; trying an older one", path)
            continue
        return path, _check(state, path, expected_fingerprint, expected_parts)
    raise CheckpointError(
        f"--resume latest: every checkpoint in {Path(run_dir) / 'checkpoints'} is unreadable "
        f"({', '.join(unreadable)}); start a new run"
    )
