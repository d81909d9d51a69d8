"""The model of a run config (``model`` section)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from debiascl.config.schema import ModelConfig
from debiascl.models.build import create_model
from debiascl.registry import call_with_options


def build_model(
    cfg: ModelConfig, mode: str, channels: int, corpus: Sequence[str] | None = None
) -> nn.Module:
    """A :class:`~debiascl.models.SimCLRModel` (image_image) or
    :class:`~debiascl.models.TwoTowerModel` (image_text) built by
    :func:`~debiascl.models.build.create_model` from the ``model`` settings.

    ``corpus``: the training texts (the bag-of-words vocabulary).
    """
    options = {**cfg.model_dump(), "mode": mode, "channels": channels, "corpus": corpus}
    return call_with_options(create_model, options, "model")
