"""Checkpoints: atomic writes, the last k kept, compatibility checks on load.

A checkpoint is one ``torch.save`` mapping with the model, optimiser, scheduler, scaler, the
objective's per-sample tables (inside its ``state_dict``), the adversary, the position in
training, RNG states and a fingerprint of the config parts that must match to resume.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from debiascl.config.schema import RunConfig
from debiascl.errors import CheckpointError
from debiascl.train.atomic import atomic_write

_NAME = re.compile(r"^epoch(\d+)-step(\d+)\.pt$")


def config_fingerprint(cfg: RunConfig, num_samples: int) -> str:
    """Hash of what a resumed run must share with the saved one (model, data, loss, detector)."""
    keep = {
        "model": cfg.model.model_dump(),
        "data": cfg.data.model_dump(exclude={"num_workers", "root", "on_bad_image"}),
        "loss": cfg.loss.model_dump(),
        "negatives": cfg.negatives.model_dump(exclude={"reset_on_resume"}),
        "fairness": cfg.fairness.model_dump(),
        "batch_size": cfg.train.batch_size,
        "num_samples": num_samples,
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch{epoch:04d}-step{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Periodic checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m[2]), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], directory: Path, name: str, keep_last: int) -> Path:
    """Write ``state`` atomically as ``directory/name`` and prune older periodic checkpoints."""
    path = directory / name
    atomic_write(path, lambda fh: torch.save(state, fh))
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def resolve_resume(resume: str, run_dir: Path) -> Path:
    """``latest`` -> newest checkpoint of ``run_dir``; otherwise a path that must exist."""
    if resume == "latest":
        found = list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise CheckpointError(
                f"--resume latest: no checkpoint in {run_dir / 'checkpoints'}; start without "
                "--resume or pass a checkpoint path"
            )
        return found[-1]
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: Path, expected_fingerprint: str | None = None) -> dict[str, Any]:
    """Read a checkpoint on CPU and check it belongs to this config and data size."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}); it may be truncated — "
            "resume from an earlier checkpoint"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a debiascl checkpoint")
    saved = state.get("fingerprint")
    if expected_fingerprint is not None and saved != expected_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with a different config or data size "
            f"(fingerprint {saved} != {expected_fingerprint}); resume with the same config"
        )
    return state
