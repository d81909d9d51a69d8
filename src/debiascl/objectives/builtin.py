"""Registrations of the losses (``loss.name`` in the config).

Each entry is a class or factory taking plain, typed arguments; :mod:`debiascl.compose` passes
it the ``loss`` settings its signature names plus the run's ``num_samples``, ``mode``,
``directions``, ``texts``, ``labels`` and ``output_dir``.
"""

from __future__ import annotations

from debiascl.objectives.debiased_loss import make_dcl, make_hcl, make_ssd
from debiascl.objectives.infonce_loss import InfoNCELoss
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.registry import LOSSES

LOSSES.register("infonce")(InfoNCELoss)
LOSSES.register("sogclr")(GlobalContrastiveLoss)
LOSSES.register("dcl")(make_dcl)
LOSSES.register("hcl")(make_hcl)
LOSSES.register("ssd")(make_ssd)
