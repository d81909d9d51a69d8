"""Fairness terms shaped like losses: a registry (:data:`FAIRNESS_TERMS`) of small modules that
each own their state and schedule and return named loss terms (see :mod:`.base`).

Registered: ``adversary`` (learned discriminator, AdFair-CLIP), ``mean_gap`` (standardised
group-mean gap), ``fisher_gap`` (whitened, Fisher separation) and ``conditional_gap`` (within each
class). To add one: write its module with ``@register_term("name")`` and import it below.
"""

from debiascl.fairness.terms import adversary as _adversary  # noqa: F401  (adversary)
from debiascl.fairness.terms import gaps as _gaps  # noqa: F401  (mean/fisher/conditional_gap)
from debiascl.fairness.terms.base import (
    FAIRNESS_TERMS,
    FairnessTerm,
    TermInputs,
    TermSettings,
    TermSetup,
    parse_term_settings,
    register_term,
    scheduled_weight,
)
from debiascl.fairness.terms.stack import FairnessTerms, schedule_epoch

__all__ = [
    "FAIRNESS_TERMS",
    "FairnessTerm",
    "FairnessTerms",
    "TermInputs",
    "TermSettings",
    "TermSetup",
    "parse_term_settings",
    "register_term",
    "schedule_epoch",
    "scheduled_weight",
]
