"""Backward-compatible home of :class:`StepContext` (now in :mod:`debiascl.negatives.context`)."""

from debiascl.negatives.context import StepContext

__all__ = ["StepContext"]
