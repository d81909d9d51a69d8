"""Fairness: pure penalties (:mod:`.penalties`), the AdFair-CLIP adversary (:mod:`.adversary`),
fairness terms shaped like losses (:mod:`.terms`, registry ``FAIRNESS_TERMS``), metrics
(:mod:`.metrics`) and accumulation over batches and ranks (:mod:`.accumulate`)."""

from debiascl.fairness.accumulate import FairnessAudit
from debiascl.fairness.adversary import (
    AdversarialFairness,
    AttributeSpec,
    Discriminator,
    GradientReversal,
    confusion_loss,
    grad_reverse,
)
from debiascl.fairness.metrics import (
    CONVENTION,
    FairnessWarning,
    choose_threshold,
    expected_calibration_error,
    fairness_report,
    intersect,
    roc_auc,
)

__all__ = [
    "CONVENTION",
    "AdversarialFairness",
    "AttributeSpec",
    "Discriminator",
    "FairnessAudit",
    "FairnessWarning",
    "GradientReversal",
    "choose_threshold",
    "confusion_loss",
    "expected_calibration_error",
    "fairness_report",
    "grad_reverse",
    "intersect",
    "roc_auc",
]
