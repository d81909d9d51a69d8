"""What ``debiascl eval RUN_DIR`` may change, where it writes, and saving its results.

Evaluating a trained run on other data is routine (a new test manifest, another label column,
readable class names), so ``eval`` accepts every ``data.*`` setting in
:data:`EVAL_DATA_KEYS`: the model is rebuilt and loaded with the data settings it was trained
with (its fingerprint is checked as for a resume), and only the frozen-feature evaluation reads
the evaluation data. Settings that change what the trained model receives (image size, channels,
mode, 16-bit scaling) or that only shape training (augmentation) are refused with a one-line
error, as is a setting not known to be evaluation-only.

The output folder is checked for writing before any work starts; the CLI prints the results
before saving them, so a save that fails late (disk full) loses nothing that was computed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from debiascl.config import load_config
from debiascl.config.schema import DataConfig, RunConfig
from debiascl.errors import ConfigError, TrainingError
from debiascl.train.atomic import atomic_write_text

#: ``data.*`` settings an evaluation may change: they pick the evaluation data, not the inputs
#: the trained model expects.
EVAL_DATA_KEYS = frozenset(
    {
        "dataset",
        "root",
        "manifest",
        "test_manifest",
        "image_column",
        "text_column",
        "label_column",
        "attribute_columns",
        "id_column",
        "train_size",
        "test_size",
        "subset_seed",
        "subsample_classes",
        "subsample_fraction",
        "caption_templates",
        "num_workers",
        "on_bad_image",
        "synthetic_correlation",
        "synthetic_test_correlation",
        "synthetic_style",
    }
)

#: ``data.*`` settings that stay as trained, with the reason shown in the error.
FIXED_DATA_KEYS = {
    "mode": "it decides the model's towers",
    "image_size": "the model was trained on images of this size",
    "channels": "the model's first layer takes this many channels",
    "high_bit_scaling": "it changes the pixel values the model was trained on",
    "augment": "augmentation only shapes training",
    "blur": "augmentation only shapes training",
}


class ResultsNotSavedError(TrainingError):
    """Evaluation finished but its results could not be written (they are on ``results``)."""

    def __init__(self, message: str, results: dict[str, Any]) -> None:
        super().__init__(message)
        self.results = results


def eval_configs(config_path: Path, overrides: list[str]) -> tuple[RunConfig, RunConfig]:
    """(config to rebuild the trained model with, config to evaluate with).

    The first is the evaluation config with the run's own ``data`` section, so the model, its
    text vocabulary and the checkpoint fingerprint are those of training.

    Raises:
        ConfigError: an override changes a ``data.*`` setting outside :data:`EVAL_DATA_KEYS`.
    """
    saved = load_config(str(config_path), ["checkpoint.resume=null"])
    evaluated = load_config(str(config_path), [*overrides, "checkpoint.resume=null"])
    changed = [
        key
        for key in DataConfig.model_fields
        if getattr(saved.data, key) != getattr(evaluated.data, key)
    ]
    fixed = [key for key in changed if key not in EVAL_DATA_KEYS]
    if fixed:
        key = fixed[0]
        why = FIXED_DATA_KEYS.get(key, "it is not known to be an evaluation-only setting")
        raise ConfigError(
            f"debiascl eval cannot change data.{key} ({why}); it may change eval.* and the "
            f"evaluation data: data.{', data.'.join(sorted(EVAL_DATA_KEYS))}"
        )
    return evaluated.model_copy(update={"data": saved.data}), evaluated


def ensure_writable_dir(folder: Path, hint: str) -> None:
    """Raise :class:`ConfigError` unless files can be created in ``folder`` (or, if it does not
    exist yet, in its nearest existing parent). Tries a real file: permission bits say nothing
    for root, read-only mounts and immutable folders."""
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{probe} is a file, not a folder: cannot write under {folder}; {hint}")
    try:
        fd, name = tempfile.mkstemp(prefix=".debiascl-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise ConfigError(f"cannot write to {probe}: {err.strerror or err}; {hint}") from None


def save_results(results: dict[str, Any], path: Path) -> None:
    """Write ``results`` as JSON (atomically); a failure is :class:`ResultsNotSavedError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(results, indent=2, default=str) + "\n")
    except (OSError, TrainingError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ResultsNotSavedError(
            f"the results could not be saved to {path} ({reason}); they were computed and "
            "printed; free space or pass --output FILE elsewhere",
            results,
        ) from None
