"""``debiascl eval RUN_DIR``: the run's model and data rebuilt, its weights loaded, evaluated.

Only the model and the data are built (no optimiser, loaders for training, objective or fairness
terms); the checkpoint gives the model weights and the logit scale the loss trained with
(:func:`debiascl.checkpoint.load_weights`), after a check of the fingerprint parts the weights
and sample ids depend on (model, data, seed, sample count). A saved config from an older version
is read in today's spelling (:func:`debiascl.config.migrate.read_run_config`).

Evaluating a trained run on other data is routine (a new test manifest, another label column,
readable class names), so ``eval`` accepts every ``data.*`` setting in
:data:`EVAL_DATA_KEYS`: the model is rebuilt and loaded with the data settings it was trained
with (its fingerprint is checked as for a resume), and only the frozen-feature evaluation reads
the evaluation data. Settings that change what the trained model receives (image size, channels,
mode, 16-bit scaling) or that only shape training (augmentation) are refused with a one-line
error, as is a setting not known to be evaluation-only, any override outside ``eval.*``, the
evaluation data and ``train.device``/``train.threads`` (``train.epochs``, ``loss.*``: they would
be ignored), and zero-shot or retrieval asked of an image-image run.

The output folder is checked for writing before any work starts; the CLI prints the results
before saving them, so a save that fails late (disk full) loses nothing that was computed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from debiascl.atomic import atomic_write_text
from debiascl.checkpoint import (
    OLD_MODEL_KEY,
    load_weights,
    resolve_resume,
    trained_logit_scale,
)
from debiascl.compose.data import build_data
from debiascl.compose.evaluation import evaluate_run_model
from debiascl.compose.fingerprint import eval_fingerprint_parts
from debiascl.compose.model import build_model
from debiascl.config.migrate import read_run_config
from debiascl.config.schema import DataConfig, RunConfig
from debiascl.errors import CheckpointError, ConfigError, DataError, TrainingError
from debiascl.seeding import seed_everything

#: ``data.*`` settings an evaluation may change: they pick the evaluation data, not the inputs
#: the trained model expects.
EVAL_DATA_KEYS = frozenset(
    {
        "dataset",
        "root",
        "manifest",
        "test_manifest",
        "shards",
        "test_shards",
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


#: settings outside ``eval.*`` and ``data.*`` an evaluation may change (where it runs).
EVAL_RUNTIME_KEYS = frozenset({"train.device", "train.threads"})

#: ``eval.*`` settings that only an image-text run uses (text tower: prompts, captions).
TEXT_EVAL_KEYS = frozenset({"zero_shot", "zero_shot_templates", "retrieval", "retrieval_ks"})


def check_eval_overrides(overrides: list[str]) -> None:
    """Raise a one-line :class:`ConfigError` for an override ``debiascl eval`` cannot use.

    Accepted: ``eval.*``, the evaluation data (``data.*`` in :data:`EVAL_DATA_KEYS`) and
    :data:`EVAL_RUNTIME_KEYS`; anything else (``train.epochs``, ``loss.temperature``, ...) only
    shapes training, so it would be ignored.
    """
    accepted = "eval.*, data." + ", data.".join(sorted(EVAL_DATA_KEYS))
    accepted += ", " + ", ".join(sorted(EVAL_RUNTIME_KEYS))
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("eval.") or key in EVAL_RUNTIME_KEYS:
            continue
        section, _, name = key.partition(".")
        if section == "data" and name in EVAL_DATA_KEYS:
            continue
        if section == "data" and name in FIXED_DATA_KEYS:
            why = FIXED_DATA_KEYS[name]
        else:
            why = "it only shapes training, the trained weights are evaluated as they are"
        raise ConfigError(f"debiascl eval cannot change {key} ({why}); it accepts {accepted}")


def _check_text_eval(cfg: RunConfig, overrides: list[str]) -> None:
    """An override asking for zero-shot or retrieval on an image-image run is an error."""
    if cfg.data.mode == "image_text":
        return
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        name = key.removeprefix("eval.")
        if key.startswith("eval.") and name in TEXT_EVAL_KEYS and getattr(cfg.eval, name):
            raise ConfigError(
                f"{key} needs an image-text run (this run has data.mode={cfg.data.mode}, no text "
                "tower): zero-shot and retrieval are not computed; drop the override"
            )


class ResultsNotSavedError(TrainingError):
    """Evaluation finished but its results could not be written (they are on ``results``)."""

    def __init__(self, message: str, results: dict[str, Any]) -> None:
        super().__init__(message)
        self.results = results


def eval_configs(
    config_path: Path, overrides: list[str]
) -> tuple[RunConfig, RunConfig, dict[str, Any]]:
    """(config to rebuild the trained model with, config to evaluate with, legacy model keys).

    The first is the evaluation config with the run's own ``data`` section, so the model, its
    text vocabulary and the checkpoint fingerprint are those of training. The third: the old
    ``model.*`` logit-scale keys of a config saved before they moved (see
    :func:`~debiascl.config.migrate.migrate_run_config`).

    Raises:
        ConfigError: an override outside ``eval.*``, :data:`EVAL_DATA_KEYS` and
            :data:`EVAL_RUNTIME_KEYS`, or one asking for zero-shot/retrieval on an image-image run.
    """
    check_eval_overrides(overrides)
    saved, legacy = read_run_config(config_path, ["checkpoint.resume=null"])
    evaluated, _ = read_run_config(config_path, [*overrides, "checkpoint.resume=null"])
    _check_text_eval(evaluated, overrides)
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
    return evaluated.model_copy(update={"data": saved.data}), evaluated, legacy


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


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def evaluate_run_dir(
    run_dir: Path,
    checkpoint: str | None = None,
    overrides: list[str] | None = None,
    output: Path | None = None,
    show: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Re-evaluate a run directory's newest (or given) checkpoint and write the results.

    Args:
        run_dir: a directory written by ``debiascl train``.
        checkpoint: checkpoint path, ``latest`` or ``best`` (default: the newest of the run).
        overrides: ``eval.*`` and evaluation-only ``data.*`` settings (:data:`EVAL_DATA_KEYS`).
        output: results file (default ``run_dir/eval.json``); files the evaluation writes
            besides (``fairness.txt``, the embedding sample) go into its folder.
        show: called with the results before they are saved (the CLI prints them).

    Raises:
        CheckpointError: not a run directory, no checkpoint, or one whose model, data or sample
            count differs from the run config's.
        ConfigError: the output folder is not writable (checked before any work) or an override
            changes a data setting the model depends on.
        ResultsNotSavedError: the results were computed but could not be written; they are on
            the exception's ``results``.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    output = Path(output) if output is not None else run_dir / "eval.json"
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; name a file such as {output}/eval.json")
    ensure_writable_dir(
        output.parent, "pass --output FILE in a writable folder to evaluate a read-only run"
    )
    model_cfg, cfg, legacy = eval_configs(config_path, list(overrides or []))
    if model_cfg.train.threads is not None:
        torch.set_num_threads(model_cfg.train.threads)
    device = _device(model_cfg.train.device)
    seed_everything(model_cfg.seed)  # the model is built as training built it
    data = build_data(model_cfg.data, model_cfg.seed)
    model = build_model(model_cfg.model, model_cfg.data.mode, data.channels, data.corpus)
    path = resolve_resume(checkpoint or "latest", run_dir)
    expected = eval_fingerprint_parts(model_cfg, data.info.num_samples, legacy)
    model_state, objective_state = load_weights(path, expected)
    scale = trained_logit_scale(
        model_state, objective_state, model_cfg.loss.temperature, model_cfg.loss.learn_temperature
    )
    model_state.pop(OLD_MODEL_KEY, None)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model of {config_path} "
            f"({str(err).splitlines()[0][:200]}); evaluate with the run's own config.yaml"
        ) from None
    model.to(device)
    corpus = data.corpus
    if cfg.data != model_cfg.data:  # evaluation data (another test manifest, label column, ...)
        data = build_data(cfg.data, cfg.seed)
    if data.test is None:  # say how to give one (streamed shards have none of their own)
        what = "data.test_shards=DIR or " if cfg.data.dataset == "shards" else ""
        raise DataError(
            f"data.dataset={cfg.data.dataset} has no test split to evaluate on: pass "
            f"{what}data.test_manifest=FILE to debiascl eval"
        )
    results = evaluate_run_model(
        cfg, model, data, scale, device, output.parent, cfg.eval.references, corpus=corpus
    )
    results["checkpoint"] = str(path)
    if show is not None:
        show(results)
    save_results(results, output)
    return results
