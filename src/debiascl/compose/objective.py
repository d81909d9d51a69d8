"""Loss, detector and objective of a run config (``loss`` and ``negatives`` sections)."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from torch import nn

from debiascl.compose.text_evidence import frozen_text_embeddings
from debiascl.config.schema import RunConfig
from debiascl.config.sections.methods import RENAMED, MethodSection
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
from debiascl.models.ema import ReferenceEncoder
from debiascl.negatives import builders as _detectors  # noqa: F401  (registers the detectors)
from debiascl.negatives.detector import FalseNegativeDetector
from debiascl.negatives.text_evidence import TextAgreement, TextEvidence
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


def _section_options(section: MethodSection) -> dict[str, Any]:
    """The section's shared keys (renamed like the component arguments) and the selected
    method's own settings (its subsection, defaults filled in)."""
    extra = set(section.model_extra or {})
    shared = section.model_dump(exclude={"name", *extra})
    return {**{RENAMED.get(k, k): v for k, v in shared.items()}, **section.settings}


def loss_options(cfg: RunConfig, info: DatasetInfo) -> dict[str, Any]:
    """Keyword arguments offered to the ``loss.name`` entry: the ``loss`` section's shared keys,
    the ``loss.<name>`` settings and the run facts (which take precedence: ``directions`` is the
    decoded tuple)."""
    return {**_section_options(cfg.loss), **run_facts(cfg, info)}


def detector_options(cfg: RunConfig, info: DatasetInfo) -> dict[str, Any]:
    """Keyword arguments offered to the ``negatives.name`` entry: the ``negatives`` section's
    shared keys, the ``negatives.<name>`` settings and the run facts. The detector never sees
    the ``loss`` section."""
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


def _detector_params(name: str) -> set[str]:
    return set(inspect.signature(DETECTORS.get(name)).parameters)


def _required(name: str, param: str) -> bool:
    """True when the registered detector ``name`` has no default for ``param``."""
    p = inspect.signature(DETECTORS.get(name)).parameters[param]
    return p.default is inspect.Parameter.empty


def needs_text_embeddings(cfg: RunConfig) -> bool:
    """True when the run's detector start rule needs the frozen text table
    (``negatives.start_rule=text_agreement``)."""
    return cfg.negatives.start_rule == "text_agreement"


def build_detector(
    cfg: RunConfig,
    info: DatasetInfo,
    loss: PairLoss | None = None,
    text_embeddings: Any = None,
) -> FalseNegativeDetector:
    """The ``negatives.name`` entry of :data:`~debiascl.registry.DETECTORS`.

    A detector naming ``text_embeddings`` receives the frozen text table
    (``negatives.text_encoder``, computed here unless given); one naming ``eta`` receives the
    per-sample eta table of ``loss`` (SSD, or DCL/HCL with a per-sample
    ``loss.<name>.eta_source``).

    Raises:
        ConfigError: an unknown name, a detector needing eta with a loss that has none, or
            text evidence (a text_sim detector, ``start_rule=text_agreement``) for data
            without texts.
    """
    name = cfg.negatives.name
    options = detector_options(cfg, info)
    params = _detector_params(name)
    if needs_text_embeddings(cfg):
        if "start_rule" not in params:
            raise ConfigError(
                f"negatives.start_rule={cfg.negatives.start_rule} is for the GloFND-type "
                f"detectors (glofnd, stable_glofnd, eta_glofnd, text_sim), not {name}"
            )
        if info.texts is None:
            raise ConfigError(
                f"negatives.start_rule={cfg.negatives.start_rule} compares the detector's "
                "candidates with their captions/reports, but the data has no texts: use "
                "start_rule epoch or converged, or data with texts (data.mode=image_text or "
                "data.text_column)"
            )
    if "text_embeddings" in params and (
        needs_text_embeddings(cfg) or _required(name, "text_embeddings")
    ):
        if text_embeddings is None:
            text_embeddings = frozen_text_embeddings(info.texts, cfg.negatives.text_encoder)
        options["text_embeddings"] = text_embeddings
    if "eta" in params:
        eta = getattr(loss, "eta_table", None)
        if eta is None:
            raise ConfigError(
                f"negatives.name={name} takes its per-anchor alpha from a per-sample eta: use "
                "loss.name=ssd, or dcl/hcl with loss.dcl.eta_source (loss.hcl.eta_source) "
                "corpus_lm, ssd_mlm or class_frequency"
            )
        options["eta"] = eta.detach().cpu()
    return DETECTORS.build_with(name, options)


def build_reference(
    cfg: RunConfig, objective: ContrastiveObjective, model: nn.Module
) -> ReferenceEncoder | None:
    """The stable copy of ``model`` (``negatives.stable_glofnd.reference`` and ``.ema_decay``)
    when the objective's detector needs one (``stable_glofnd``), attached to the objective as
    ``reference_encoder`` so it travels in the objective's ``state_dict``; else None."""
    if not getattr(objective.detector, "needs_reference", False):
        return None
    own = cfg.negatives.settings
    reference = ReferenceEncoder(model, own.get("reference", "ema"), own.get("ema_decay", 0.999))
    objective.reference_encoder = reference
    return reference


def build_objective(cfg: RunConfig, info: DatasetInfo) -> ContrastiveObjective:
    """The :class:`ContrastiveObjective` that ``cfg`` describes, for data described by ``info``.

    Raises:
        ConfigError: an unknown loss or detector name, ``loss.learn_temperature`` for a loss that
            keeps a fixed temperature, or any component's own configuration error.
    """
    loss = build_loss(cfg, info)
    texts = None
    if cfg.negatives.text_diagnostics or (needs_text_embeddings(cfg) and info.texts is not None):
        texts = frozen_text_embeddings(info.texts, cfg.negatives.text_encoder)
    detector = build_detector(cfg, info, loss, texts)
    objective = ContrastiveObjective(
        mode=cfg.data.mode,
        loss=loss,
        detector=detector,
        num_samples=info.num_samples,
        directions=run_directions(cfg),
    )
    if texts is not None and cfg.negatives.text_diagnostics:
        # removals against text evidence per epoch (text_agreement, text_recall)
        objective.text_evidence = TextEvidence(texts)
        objective.text_agreement = TextAgreement(
            objective.text_evidence, cfg.negatives.text_threshold
        )
    return objective
