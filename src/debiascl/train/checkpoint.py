"""The trainer's view of checkpoints: one import for files, RNG states and fingerprints.

The files and RNG states live in :mod:`debiascl.checkpoint` (below training and evaluation,
never reading a config); the fingerprints, computed from the run config, in
:mod:`debiascl.compose.fingerprint`. This module re-exports both (``from debiascl.train import
checkpoint as ckpt`` in the trainer, scripts and tests).
"""

from debiascl.checkpoint import (
    BEST_NAME,
    FORMAT_VERSION,
    capture_rng,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    load_for_resume,
    resolve_resume,
    restore_rng,
    save_checkpoint,
)
from debiascl.compose.fingerprint import (
    EVAL_ONLY_DATA_KEYS,
    config_fingerprint,
    data_fingerprint,
    fingerprint_parts,
)

__all__ = [
    "BEST_NAME",
    "EVAL_ONLY_DATA_KEYS",
    "FORMAT_VERSION",
    "capture_rng",
    "checkpoint_name",
    "config_fingerprint",
    "data_fingerprint",
    "fingerprint_parts",
    "list_checkpoints",
    "load_checkpoint",
    "load_for_resume",
    "resolve_resume",
    "restore_rng",
    "save_checkpoint",
]
