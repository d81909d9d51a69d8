"""Loss, detector and objective of a run config (``loss`` and ``negatives`` sections)."""

from __future__ import annotations

import typing
from typing import Any

from debiascl.config.schema import RunConfig
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
from debiascl.negatives import builders as _detectors  # noqa: F401  (registers the detectors)
from debiascl.negatives.detector import FalseNegativeDetector
from debiascl.objectives import builtin as _losses  # noqa: F401  (registers the losses)
from debiascl.objectives.base import PairLoss
from debiascl.objectives.objective import ContrastiveObjective
from debiascl.registry import DETECTORS, LOSSES

#: ``loss.directions`` -> the batch directions an image_text objective produces.
_DIRECTIONS = {
    "both": ("image_to_text", "text_to_image"),
    "image_to_text": ("image_to_text",),
    "text_to_image": ("text_to_image",),
}

#: Config keys whose component argument has another name (section key -> argument).
_RENAMED = {"table_placement": "placement", "table_sharding": "sharding"}


def run_directions(cfg: RunConfig) -> tuple[str, ...]:
    """The decoded ``loss.directions`` (the one place it is read)."""
    return _DIRECTIONS[cfg.loss.directions]


def run_facts(cfg: RunConfig, info: DatasetInfo) -> dict[str, Any]:
    """Facts about the run every component may ask for by parameter name."""
    return {
        "num_samples": info.num_samples,
        "mode": cfg.data.mode,
        "directions": run_directions(cfg),
        "texts": info.texts,
        "labels": info.labels,
        "output_dir": cfg.output_dir,
    }


def _section_options(section: Any) -> dict[str, Any]:
    options = {_RENAMED.get(k, k): v for k, v in section.model_dump().items()}
    options.pop("name", None)
    return options


def loss_options(cfg: RunConfig, info: DatasetInfo) -> dict[str, Any]:
    """Keyword arguments offered to the ``loss.name`` entry: the ``loss`` section and the run
    facts (which take precedence: ``directions`` is the decoded tuple)."""
    return {**_section_options(cfg.loss), **run_facts(cfg, info)}


def detector_options(cfg: RunConfig, info: DatasetInfo) -> dict[str, Any]:
    """Keyword arguments offered to the ``negatives.name`` entry: the ``negatives`` section and
    the run facts. The detector never sees the ``loss`` section."""
    return {**_section_options(cfg.negatives), **run_facts(cfg, info)}


def _loss_class(name: str) -> type | None:
    """The class the registered loss ``name`` builds (None when its factory does not say)."""
    entry = LOSSES.get(name)
    if isinstance(entry, type):
        return entry
    try:
        cls = typing.get_type_hints(getattr(entry, "func", entry)).get("return")
    except (NameError, TypeError):
        return None
    return cls if isinstance(cls, type) else None


def _fixed_temperature_error(name: str) -> ConfigError:
    learners = ", ".join(
        n for n in LOSSES.names() if getattr(_loss_class(n), "learns_temperature", False)
    )
    return ConfigError(
        f"loss.name={name} keeps a fixed temperature; set loss.learn_temperature=false "
        f"(losses that learn it: {learners or 'none'})"
    )


def build_loss(cfg: RunConfig, info: DatasetInfo) -> PairLoss:
    """The ``loss.name`` entry of :data:`~debiascl.registry.LOSSES`.

    Raises:
        ConfigError: ``loss.learn_temperature`` for a loss that keeps a fixed temperature
            (checked before the loss is built), or the loss's own configuration error.
    """
    name = cfg.loss.name
    learn = cfg.loss.learn_temperature
    cls = _loss_class(name)
    if learn and cls is not None and not getattr(cls, "learns_temperature", False):
        raise _fixed_temperature_error(name)
    loss = LOSSES.build_with(name, loss_options(cfg, info))
    if learn and not getattr(loss, "learns_temperature", False):
        raise _fixed_temperature_error(name)
    return loss


def build_detector(cfg: RunConfig, info: DatasetInfo) -> FalseNegativeDetector:
    """The ``negatives.name`` entry of :data:`~debiascl.registry.DETECTORS`."""
    return DETECTORS.build_with(cfg.negatives.name, detector_options(cfg, info))


def build_objective(cfg: RunConfig, info: DatasetInfo) -> ContrastiveObjective:
    """The :class:`ContrastiveObjective` that ``cfg`` describes, for data described by ``info``.

    Raises:
        ConfigError: an unknown loss or detector name, ``loss.learn_temperature`` for a loss that
            keeps a fixed temperature, or any component's own configuration error.
    """
    loss = build_loss(cfg, info)
    detector = build_detector(cfg, info)
    return ContrastiveObjective(
        mode=cfg.data.mode,
        loss=loss,
        detector=detector,
        num_samples=info.num_samples,
        directions=run_directions(cfg),
    )
