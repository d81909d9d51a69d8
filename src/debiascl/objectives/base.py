"""Interfaces that losses and false-negative detectors implement, and the terms they return.

A *pair loss* turns a :class:`~debiascl.pairs.PairwiseBatch` and a keep-mask into per-anchor loss
terms; its maths lives in a pure function under :mod:`debiascl.losses`, and the module only owns
state (e.g. SogCLR's per-sample moving averages). A *detector* turns a batch into a keep-mask over
negatives (False = declared false negative, removed from the denominator) and owns its own state
(e.g. GloFND's per-sample thresholds). Both are ``nn.Module`` so their tables travel in
``state_dict`` and checkpoints.

The detector interface lives in :mod:`debiascl.negatives.detector` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from debiascl.errors import ConfigError
from debiascl.negatives.context import StepContext
from debiascl.negatives.detector import FalseNegativeDetector, NoDetector, keep_at_least_one
from debiascl.objectives.scale import LogitScale
from debiascl.pairs import PairwiseBatch


@dataclass
class LossTerms:
    """Per-anchor output of a pair loss.

    Attributes:
        loss: (A,) surrogate whose gradient is the method's estimator (in the graph).
        objective: (A,) detached value of the true objective to log (for InfoNCE the same as loss;
            for SogCLR the global objective estimated with u, not the surrogate).
        logs: scalar diagnostics (already reduced over the local anchors).
    """

    loss: torch.Tensor
    objective: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class PairLoss(nn.Module):
    """Base class: per-anchor loss of one direction of a contrastive batch.

    The loss owns its temperature: built with ``temperature=t`` it holds a :class:`LogitScale`
    (``self.scale``, 1 / t, learned when ``learn_temperature``) that
    :class:`~debiascl.objectives.ContrastiveObjective` passes to :meth:`forward`. Built without
    one (``temperature=None``), the caller passes ``logit_scale`` to the objective on every call.
    Only subclasses with ``learns_temperature = True`` accept ``learn_temperature=True``.

    Raises:
        ConfigError: ``learn_temperature`` for a loss that keeps a fixed temperature, or without
            a temperature.
    """

    #: Whether this loss supports a learned temperature (CLIP-style); fixed-only otherwise.
    learns_temperature: ClassVar[bool] = False
    #: Whether ``forward`` accepts a batch of stacked directions (``PairwiseBatch.parts``) and
    #: returns per row the values one call per direction would.
    stacks_directions: ClassVar[bool] = False

    def __init__(
        self,
        temperature: float | None = None,
        learn_temperature: bool = False,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if learn_temperature and not self.learns_temperature:
            raise ConfigError(
                f"{type(self).__name__} keeps a fixed temperature; set "
                "loss.learn_temperature=false (only losses that learn it, such as infonce, accept "
                "true)"
            )
        if learn_temperature and temperature is None:
            raise ConfigError("learn_temperature=True needs an initial temperature")
        self.scale: LogitScale | None = (
            LogitScale(temperature, learn_temperature, max_logit_scale)
            if temperature is not None
            else None
        )

    def forward(
        self,
        batch: PairwiseBatch,
        keep: torch.Tensor,
        logit_scale: torch.Tensor,
        ctx: StepContext,
    ) -> LossTerms:
        raise NotImplementedError


__all__ = [
    "FalseNegativeDetector",
    "LossTerms",
    "NoDetector",
    "PairLoss",
    "StepContext",
    "keep_at_least_one",
]
