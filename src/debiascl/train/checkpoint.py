"""Checkpoints: atomic writes, the last k and the best kept, compatibility checks on load.

A checkpoint is one ``torch.save`` mapping with the model, optimiser, scheduler, scaler, the
objective's per-sample tables (inside its ``state_dict``), the adversary, the position in
training (epoch, step and batch within the epoch), the epoch's running log sums, every RNG state
and a fingerprint of the config parts that must match to resume (see ``docs/reliability.md``).

Files in ``<run_dir>/checkpoints``:

* ``epoch{E:04d}-step{S:08d}.pt`` -- periodic checkpoints (``E`` = completed epochs, so a
  mid-epoch checkpoint of the first epoch is ``epoch0000-...``); the newest
  ``checkpoint.keep_last`` are kept.
* ``best.pt`` -- the end-of-epoch checkpoint with the lowest mean training loss so far (a hard
  link to, or copy of, that periodic file, so pruning never removes it).

Checkpoints hold only tensors and plain containers and are read with ``weights_only=True``: a
checkpoint file cannot run code when loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from debiascl.config.schema import RunConfig
from debiascl.errors import CheckpointError
from debiascl.train.atomic import atomic_write
from debiascl.train.legacy import SCALE_CHANGE

logger = logging.getLogger("debiascl.train")

#: Bumped when the layout of the saved mapping changes incompatibly.
FORMAT_VERSION = 2
BEST_NAME = "best.pt"
_NAME = re.compile(r"^epoch(\d+)-step(\d+)\.pt$")


# ------------------------------------------------------------------------- fingerprints
# Data settings that only affect evaluation or I/O: a resume or `debiascl eval` may change them.
#: ``root`` is only a download/cache location for the built-in datasets (moving the files to
#: node-local scratch is fine); for ``manifest``/``image_folder`` it names the data (see
#: :func:`data_fingerprint`).
EVAL_ONLY_DATA_KEYS = frozenset({"num_workers", "on_bad_image", "test_size", "test_manifest"})
_BUILTIN_DATASETS = {"fashion_mnist", "digits", "synthetic_attr"}


def data_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The settings that define the training data, its order and the sample-id space.

    Keys are dotted config names (``data.train_size``, ``seed``, ...); values as in the config;
    ``data.*`` settings at their default are left out (a missing key means "the default").
    Covered: every ``data.*`` setting except :data:`EVAL_ONLY_DATA_KEYS` (the dataset, mode,
    manifest and its columns, ``train_size``/``subset_seed``/``subsample_*``, image size,
    channels, captions, augmentation) -- plus ``data.root`` where it names the data (manifest,
    image folder) -- and the run ``seed``, which picks the training subset (without
    ``data.subset_seed``) and every epoch's shuffling order, so a resumed epoch skips exactly the
    samples the interrupted one trained on.
    """
    exclude = set(EVAL_ONLY_DATA_KEYS)
    if cfg.data.dataset in _BUILTIN_DATASETS:
        exclude.add("root")
    # Settings left at their default are omitted (like the other parts): a data field added in
    # a later version leaves older checkpoints loadable.
    values = cfg.data.model_dump(mode="json", exclude=exclude, exclude_defaults=True)
    out = {f"data.{key}": val for key, val in sorted(values.items())}
    out["seed"] = cfg.seed
    return out


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def fingerprint_parts(cfg: RunConfig, num_samples: int) -> dict[str, str]:
    """One short hash per config part a resumed run must share with the saved one.

    Training length (``train.epochs``, ``max_steps``), logging, evaluation, worker counts and
    the bad-image policy may change between a run and its resume; the model, data (every key of
    :func:`data_fingerprint`, the run seed included), loss, detector, adversary, optimiser
    settings, global batch size and number of training samples may not (their state would not
    fit, the sample ids would name other samples, or -- for ``optim.*``, whose values the
    optimiser and scheduler states restore -- a change would be silently ignored). Each data key
    is its own part, so a refused resume names it.
    """

    # exclude_defaults: a field added in a later version (with its default) leaves old
    # checkpoints loadable; only settings a user changed enter the hash.
    def dump(section: Any, exclude: set[str] | None = None) -> dict[str, Any]:
        return section.model_dump(mode="json", exclude_defaults=True, exclude=exclude)

    parts: dict[str, Any] = {
        "model": dump(cfg.model),
        **data_fingerprint(cfg),
        "loss": dump(cfg.loss),
        "negatives": dump(cfg.negatives, {"reset_on_resume"}),
        "fairness": dump(cfg.fairness),  # the audit settings are in eval.fairness_audit
        "optim": dump(cfg.optim),
        "batch_size": cfg.train.batch_size,
        "num_samples": num_samples,
    }
    return {key: _hash(val) for key, val in parts.items()}


def config_fingerprint(cfg: RunConfig, num_samples: int) -> str:
    """Hash of :func:`fingerprint_parts` (what a resumed run must share with the saved one)."""
    parts = fingerprint_parts(cfg, num_samples)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """Global RNG states: torch CPU, every CUDA device, numpy and Python's ``random``.

    Stored as tensors and plain containers so the checkpoint loads with ``weights_only=True``.
    """
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_plain(random.getstate()),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when the devices exist)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another GPU count: the current device continues from the first saved stream
            torch.cuda.set_rng_state(cuda[0])
    if state.get("numpy") is not None:
        n = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                n["key"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
    if state.get("python") is not None:
        random.setstate(_python_state_from_plain(state["python"]))


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(plain: list) -> tuple:
    version, internal, gauss = plain
    return (version, tuple(internal), gauss)


# ------------------------------------------------------------------------- files
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
    state: dict[str, Any], directory: Path, name: str, keep_last: int, is_best: bool = False
) -> Path:
    """Write ``state`` atomically as ``directory/name``, update ``best.pt``, prune old ones.

    Pruning runs only after the new file is complete and renamed, so at every instant at least
    one complete checkpoint exists. A failed write (disk full) raises
    :class:`~debiascl.errors.TrainingError` and leaves every existing checkpoint untouched.
    """
    directory = Path(directory)
    path = directory / name
    atomic_write(path, lambda fh: torch.save(state, fh))
    if is_best:
        _link_or_copy(path, directory / BEST_NAME)
    for old in list_checkpoints(directory)[:-keep_last]:
        if old != path:
            old.unlink(missing_ok=True)
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
    if expected_fingerprint is not None and saved != expected_fingerprint:
        differing = ""
        names: list[str] = []
        saved_parts = state.get("fingerprint_parts")
        if expected_parts is not None and isinstance(saved_parts, dict):
            keys = set(expected_parts) | set(saved_parts)
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
