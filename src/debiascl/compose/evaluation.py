"""Evaluation settings from a run config, and a run's model evaluated (composition layer).

:func:`debiascl.eval.run.evaluate_model` takes a model, data and plain
:class:`~debiascl.eval.settings.EvalSettings`; this module reads the ``eval`` (and
``fairness.on``) settings of a :class:`~debiascl.config.RunConfig` into them and supplies the
random-init reference encoder, for ``Trainer.evaluate`` and ``debiascl eval RUN_DIR`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from debiascl.compose.model import build_model
from debiascl.config.schema import RunConfig
from debiascl.data.build import DataBundle
from debiascl.eval.run import evaluate_model
from debiascl.eval.settings import AuditSettings, EvalSettings
from debiascl.seeding import seed_everything


def eval_settings(cfg: RunConfig) -> EvalSettings:
    """The evaluation settings of ``cfg``: ``eval.*``, ``fairness.on``, the dataset and seed."""
    audit = cfg.eval.fairness_audit.model_dump()
    return EvalSettings(
        dataset=cfg.data.dataset,
        seed=cfg.seed,
        **cfg.eval.model_dump(exclude={"fairness_audit"}),
        fairness_audit=AuditSettings(**audit, on=cfg.fairness.on),
    )


def reference_model(
    cfg: RunConfig, channels: int, corpus: Sequence[str] | None
) -> Callable[[], nn.Module]:
    """Builds the encoder at the random initialisation training started from (seeded alike);
    ``corpus``: the training texts (a bag-of-words tower's vocabulary)."""

    def build() -> nn.Module:
        seed_everything(cfg.seed)
        return build_model(cfg.model, cfg.data.mode, channels, corpus)

    return build


def evaluate_run_model(
    cfg: RunConfig,
    model: nn.Module,
    data: DataBundle,
    logit_scale: float | None,
    device: torch.device | str,
    out_dir: Path | None,
    references: bool,
    corpus: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`~debiascl.eval.run.evaluate_model` with the settings of ``cfg``.

    ``references`` overrides ``eval.references`` (periodic evaluations during training skip
    them); ``logit_scale`` is the trained 1 / t (the loss's, or the checkpoint's); ``corpus``:
    the training texts when ``data`` is other evaluation data (default: ``data``'s).
    """
    settings = eval_settings(cfg)
    settings.references = references
    return evaluate_model(
        model,
        data,
        settings,
        logit_scale=logit_scale,
        device=device,
        out_dir=out_dir,
        reference_model=reference_model(
            cfg, data.channels, data.corpus if corpus is None else corpus
        )
        if references
        else None,
    )
