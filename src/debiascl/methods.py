"""Build the configured loss, detector and objective; importing this registers every method.

To add a loss or detector: write its module, decorate its builder with
``@LOSSES.register("name")`` / ``@DETECTORS.register("name")`` and import the module below.
"""

from __future__ import annotations

from debiascl.config.schema import RunConfig
from debiascl.data.info import DatasetInfo
from debiascl.negatives import builders as _negatives  # noqa: F401  (glofnd, fnc, single, oracle)
from debiascl.objectives import builtin as _builtin  # noqa: F401  (registers infonce, none)
from debiascl.objectives import debiased_loss as _debiased  # noqa: F401  (dcl, hcl, ssd)
from debiascl.objectives import sogclr_loss as _sogclr  # noqa: F401  (registers sogclr)
from debiascl.objectives.objective import ContrastiveObjective
from debiascl.registry import DETECTORS, LOSSES

_DIRECTIONS = {
    "both": ("image_to_text", "text_to_image"),
    "image_to_text": ("image_to_text",),
    "text_to_image": ("text_to_image",),
}


def build_objective(cfg: RunConfig, info: DatasetInfo) -> ContrastiveObjective:
    """The :class:`ContrastiveObjective` that ``cfg`` describes, for data described by ``info``."""
    loss = LOSSES.build(cfg.loss.name, cfg, info)
    detector = DETECTORS.build(cfg.negatives.name, cfg, info)
    return ContrastiveObjective(
        mode=cfg.data.mode,
        loss=loss,
        detector=detector,
        num_samples=info.num_samples,
        directions=_DIRECTIONS[cfg.loss.directions],
    )
