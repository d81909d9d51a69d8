"""The fingerprint a checkpoint must match: one short hash per config part (composition layer).

:mod:`debiascl.checkpoint` stores and compares fingerprints without reading a config; this
module computes them from a :class:`~debiascl.config.RunConfig`. A resume must match every
part; an evaluation only :data:`EVAL_PARTS` and the ``data.*`` parts (what the weights and the
sample ids depend on). See ``docs/reliability.md``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from debiascl.config.schema import RunConfig

# Data settings that only affect evaluation or I/O: a resume or `debiascl eval` may change them.
#: ``root`` is only a download/cache location for the built-in datasets (moving the files to
#: node-local scratch is fine); for ``manifest``/``image_folder`` it names the data (see
#: :func:`data_fingerprint`).
EVAL_ONLY_DATA_KEYS = frozenset(
    {"num_workers", "on_bad_image", "test_size", "test_manifest", "test_shards"}
)
_BUILTIN_DATASETS = {"fashion_mnist", "digits", "synthetic_attr", "tinted_fashion_mnist"}


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

    Training length (``train.epochs``, ``max_steps``), logging, evaluation, worker counts,
    ``table_sharding`` and the bad-image policy may change between a run and its resume; the
    model, data (every key of :func:`data_fingerprint`, the run seed included), loss, detector,
    adversary, optimiser settings, global batch size and number of training samples may not
    (their state would not fit, the sample ids would name other samples, or -- for ``optim.*``,
    whose values the optimiser and scheduler states restore -- a change would be silently
    ignored). Each data key is its own part, so a refused resume names it.
    """

    # exclude_defaults: a field added in a later version (with its default) leaves old
    # checkpoints loadable; only settings a user changed enter the hash.
    def dump(section: Any, exclude: set[str] | None = None) -> dict[str, Any]:
        return section.model_dump(mode="json", exclude_defaults=True, exclude=exclude)

    parts: dict[str, Any] = {
        "model": dump(cfg.model),
        **data_fingerprint(cfg),
        # table_sharding only changes where the rows live (sharded tables are bit-equal to
        # replicated ones; a resume re-shards them), so a resume may switch it.
        # flat_settings: shared and own settings in one mapping, the spelling checkpoints were
        # hashed with before the per-method subsections (negatives.glofnd.lr was negatives.lr)
        "loss": cfg.loss.flat_settings({"table_sharding"}),
        "negatives": cfg.negatives.flat_settings({"reset_on_resume", "table_sharding"}),
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


#: Parts besides ``data.*`` that an evaluation of saved weights depends on.
EVAL_PARTS = ("model", "seed", "num_samples")


def eval_fingerprint_parts(
    cfg: RunConfig, num_samples: int, legacy_model: dict[str, Any] | None = None
) -> dict[str, str]:
    """The parts of :func:`fingerprint_parts` that loading weights for evaluation checks.

    ``legacy_model``: model keys a saved config carried before they moved (see
    :func:`debiascl.config.migrate.migrate_run_config`); the checkpoint's model part was hashed
    with them, so they enter the expected hash again.
    """
    parts = fingerprint_parts(cfg, num_samples)
    out = {k: v for k, v in parts.items() if k in EVAL_PARTS or k.startswith("data.")}
    if legacy_model:
        model = cfg.model.model_dump(mode="json", exclude_defaults=True)
        out["model"] = _hash({**model, **legacy_model})
    return out
