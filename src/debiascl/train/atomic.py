"""Backward-compatible alias of :mod:`debiascl.atomic` (atomic file writes), which moved below
``train`` so that report and evaluation code can write files without importing the trainer."""

import sys

from debiascl import atomic as _atomic

sys.modules[__name__] = _atomic
