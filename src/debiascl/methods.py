"""Build the configured loss, detector and objective; importing this registers every method.

To add a loss or detector: write its module, decorate its builder with
``@LOSSES.register("name")`` / ``@DETECTORS.register("name")`` and import the module below.
"""

from __future__ import annotations

import typing

from debiascl.config.schema import RunConfig
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
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


def _learns(name: str) -> bool | None:
    """Whether the registered loss ``name`` supports a learned temperature, read from its
    builder's return type (None when the builder does not name one)."""
    try:
        cls = typing.get_type_hints(LOSSES.get(name)).get("return")
    except (NameError, TypeError):
        return None
    return None if cls is None else bool(getattr(cls, "learns_temperature", False))


def _fixed_temperature_error(name: str) -> ConfigError:
    learners = ", ".join(n for n in LOSSES.names() if _learns(n))
    return ConfigError(
        f"loss.name={name} keeps a fixed temperature; set loss.learn_temperature=false "
        f"(losses that learn it: {learners or 'none'})"
    )


def build_objective(cfg: RunConfig, info: DatasetInfo) -> ContrastiveObjective:
    """The :class:`ContrastiveObjective` that ``cfg`` describes, for data described by ``info``.

    Raises:
        ConfigError: ``loss.learn_temperature`` for a loss that keeps a fixed temperature
            (checked before the loss is built), or any builder's own configuration error.
    """
    learn = cfg.loss.learn_temperature
    if learn and _learns(cfg.loss.name) is False:
        raise _fixed_temperature_error(cfg.loss.name)
    loss = LOSSES.build(cfg.loss.name, cfg, info)
    if learn and not getattr(loss, "learns_temperature", False):
        raise _fixed_temperature_error(cfg.loss.name)
    detector = DETECTORS.build(cfg.negatives.name, cfg, info)
    return ContrastiveObjective(
        mode=cfg.data.mode,
        loss=loss,
        detector=detector,
        num_samples=info.num_samples,
        directions=_DIRECTIONS[cfg.loss.directions],
    )
