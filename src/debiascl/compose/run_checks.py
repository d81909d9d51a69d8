"""Checks of a training run's config before any work: settings the run would silently ignore are
one-line errors, and settings that make a method do nothing get a one-line warning."""

from __future__ import annotations

import warnings
from typing import Any

from debiascl.config.schema import RunConfig
from debiascl.errors import ConfigError

#: ``model.*`` settings of the text tower, which an image-image run does not build.
TEXT_TOWER_KEYS = (
    "text_encoder",
    "text_trainable",
    "text_train_layers",
    "text_pooling",
    "text_max_length",
)
#: ``eval.*`` settings of zero-shot classification and retrieval (image-text runs only).
TEXT_EVAL_SETTINGS = ("zero_shot_templates", "retrieval_ks")
#: detectors whose per-sample thresholds start at ``init`` and move once per epoch and sample
PER_SAMPLE_THRESHOLDS = ("glofnd", "stable_glofnd", "eta_glofnd", "text_sim")
#: a threshold that cannot fall below this cosine removes (almost) nothing
_NEAR_ONE = 0.9


def check_ignored_by_mode(cfg: RunConfig) -> None:
    """Refuse text-tower and text-evaluation settings in an image-image run (one line).

    Raises:
        ConfigError: ``model.text_*`` or ``eval.zero_shot_templates`` / ``eval.retrieval_ks``
            set to a value other than the default while ``data.mode=image_image``.
    """
    if cfg.data.mode != "image_image":
        return
    for name, section, keys, why in (
        ("model", cfg.model, TEXT_TOWER_KEYS, "an image-image run builds no text tower"),
        ("eval", cfg.eval, TEXT_EVAL_SETTINGS, "zero-shot and retrieval need a text tower"),
    ):
        for key in keys:
            if section.changed(key):
                raise ConfigError(
                    f"{name}.{key}={getattr(section, key)} is not used with "
                    f"data.mode=image_image ({why}); remove it or set data.mode=image_text"
                )


def _method_settings(cfg: RunConfig) -> dict[str, Any]:
    settings = getattr(cfg.negatives, "settings", None)
    return dict(settings) if settings is not None else cfg.negatives.model_dump()


def warn_if_thresholds_cannot_move(cfg: RunConfig, epochs_run: int) -> None:
    """Warn (one line) when per-sample thresholds initialised at 1 cannot get below cosine 0.9
    within the run, so the detector would remove (almost) nothing.

    Each sample's threshold is updated once per epoch from ``negatives.update_start_epoch`` on;
    a per-sample Adam step moves it by at most about ``lr``, an SGD step by ``lr * alpha``
    (nothing above the threshold). ``epochs_run``: the epochs this run trains (``max_steps``
    included).
    """
    settings = _method_settings(cfg)
    if cfg.negatives.name not in PER_SAMPLE_THRESHOLDS or settings.get("init", "one") != "one":
        return
    if cfg.negatives.name == "text_sim" and settings.get("text_rule") != "glofnd":
        return
    start = cfg.negatives.update_start_epoch
    start = cfg.negatives.start_epoch if start is None else start
    visits = max(0, epochs_run - start)
    lr = float(settings.get("lr", 0.05))
    per_visit = lr if settings.get("optimizer", "adam") == "adam" else lr * cfg.negatives.alpha
    lowest = 1.0 - visits * per_visit
    if lowest > _NEAR_ONE:
        name = cfg.negatives.name
        warnings.warn(
            f"negatives.{name}.init=one starts every threshold at 1 and this run updates each "
            f"one {visits} time(s) in {epochs_run} epoch(s), by at most {per_visit:g} each: "
            f"thresholds stay above {lowest:.2f}, so {name} will remove (almost) nothing; set "
            f"negatives.{name}.init=batch_quantile, train longer, or lower "
            "negatives.update_start_epoch",
            UserWarning,
            stacklevel=2,
        )
