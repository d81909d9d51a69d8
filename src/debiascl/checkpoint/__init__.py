"""Reading and writing run checkpoints, below both training and evaluation.

* :mod:`~debiascl.checkpoint.files`: the files of ``<run_dir>/checkpoints`` (atomic save, keep
  last k and best, resolve ``latest``/``best``/a path, read with the fingerprint check);
* :mod:`~debiascl.checkpoint.shards`: per-rank files of sharded per-sample tables, listed by
  the checkpoint they belong to;
* :mod:`~debiascl.checkpoint.rng`: RNG states stored as tensors;
* :mod:`~debiascl.checkpoint.legacy`: layouts of older checkpoints (the logit scale that moved
  from the model to the loss).

The fingerprint a checkpoint must match is computed from the run config by
:mod:`debiascl.compose.fingerprint`; this package never reads a config. The trainer resumes with
:func:`load_for_resume`; ``debiascl eval`` loads weights only, with :func:`load_weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from debiascl.checkpoint.files import (
    BEST_NAME,
    FORMAT_VERSION,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    load_for_resume,
    resolve_resume,
    save_checkpoint,
)
from debiascl.checkpoint.legacy import OLD_MODEL_KEY, split_logit_scale, trained_logit_scale
from debiascl.checkpoint.rng import capture_rng, restore_rng


def load_weights(
    path: Path, expected_parts: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model state, objective state) of the checkpoint at ``path``, nothing else.

    ``expected_parts``: fingerprint parts that must match (e.g. the model, data and sample
    count an evaluation depends on). The states are as saved: a checkpoint from before the loss
    owned the temperature has the model entry ``OLD_MODEL_KEY``; :func:`trained_logit_scale`
    reads the trained scale from both states, then drop that entry before loading the model.

    Raises:
        CheckpointError: unreadable file, not a debiascl checkpoint, or a differing part.
    """
    state = load_checkpoint(Path(path), None, expected_parts)
    return dict(state["model"]), dict(state.get("objective") or {})


__all__ = [
    "BEST_NAME",
    "FORMAT_VERSION",
    "OLD_MODEL_KEY",
    "capture_rng",
    "checkpoint_name",
    "list_checkpoints",
    "load_checkpoint",
    "load_for_resume",
    "load_weights",
    "resolve_resume",
    "restore_rng",
    "save_checkpoint",
    "split_logit_scale",
    "trained_logit_scale",
]
