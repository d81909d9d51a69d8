"""Contrastive objectives: layouts + detectors + losses, usable from any training loop."""

from debiascl.negatives.context import StepContext
from debiascl.objectives.base import (
    FalseNegativeDetector,
    LossTerms,
    NoDetector,
    PairLoss,
    keep_at_least_one,
)
from debiascl.objectives.infonce_loss import InfoNCELoss
from debiascl.objectives.objective import ContrastiveObjective, ObjectiveOutput

__all__ = [
    "ContrastiveObjective",
    "FalseNegativeDetector",
    "InfoNCELoss",
    "LossTerms",
    "NoDetector",
    "ObjectiveOutput",
    "PairLoss",
    "StepContext",
    "keep_at_least_one",
]
