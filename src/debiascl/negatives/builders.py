"""Registrations of the false-negative detectors (``negatives.name`` in the config).

Each entry is the detector class itself: its constructor takes plain, typed arguments, and
:mod:`debiascl.compose` passes it the ``negatives`` settings its signature names plus the run's
``num_samples``, ``mode`` and ``directions``.
"""

from __future__ import annotations

from debiascl.negatives.detector import NoDetector
from debiascl.negatives.fnc import FNCDetector
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.oracle import OracleDetector
from debiascl.negatives.single import SingleThresholdDetector
from debiascl.negatives.stable import EtaGloFNDDetector, StableGloFNDDetector
from debiascl.negatives.text_sim import TextSimilarityDetector
from debiascl.registry import DETECTORS

DETECTORS.register("none")(NoDetector)
DETECTORS.register("glofnd")(GloFNDDetector)
DETECTORS.register("fnc")(FNCDetector)
DETECTORS.register("single")(SingleThresholdDetector)
DETECTORS.register("oracle")(OracleDetector)
DETECTORS.register("text_sim")(TextSimilarityDetector)
DETECTORS.register("stable_glofnd")(StableGloFNDDetector)
DETECTORS.register("eta_glofnd")(EtaGloFNDDetector)
