"""False-negative detectors (keep-masks over negatives) and their diagnostics.

Import the detectors from their modules (``debiascl.negatives.glofnd`` etc.); this package
``__init__`` stays import-light because :mod:`debiascl.objectives` imports the detector
interface and the diagnostics.
"""
