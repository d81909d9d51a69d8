"""A stable copy of a model for detectors that need steady similarities (``stable_glofnd``).

:class:`ReferenceEncoder` keeps either an exponential moving average (EMA, "momentum") of the
online model's parameters and buffers, ``p_ref <- decay * p_ref + (1 - decay) * p``, updated after
each optimiser step (:class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`), or a frozen copy of the initial (e.g.
pretrained) model (``kind="initial"``, never updated). It never trains (no gradients), runs in
eval mode, and its state travels in ``state_dict`` so resumed runs continue the same average.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from debiascl.errors import ConfigError


class ReferenceEncoder(nn.Module):
    """EMA or frozen initial copy of ``model``.

    Args:
        model: the online model (copied; the copy is independent of later changes).
        kind: ``"ema"`` or ``"initial"``.
        decay: EMA decay per optimiser step, in [0, 1) (0.999: a horizon of ~1000 steps).

    Raises:
        ConfigError: an unknown kind or a decay outside [0, 1).
    """

    def __init__(self, model: nn.Module, kind: str = "ema", decay: float = 0.999) -> None:
        super().__init__()
        if kind not in ("ema", "initial"):
            raise ConfigError(f"reference encoder must be 'ema' or 'initial', got {kind!r}")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must lie in [0, 1), got {decay}")
        self.kind = kind
        self.decay = float(decay)
        if kind == "ema":
            self.average = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
            )
        else:
            self.average = copy.deepcopy(model)
        self.average.requires_grad_(False)
        self.average.eval()

    def train(self, mode: bool = True) -> ReferenceEncoder:
        """Stays in eval mode (batch-norm uses the averaged statistics)."""
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (no-op for ``kind="initial"``)."""
        if self.kind == "ema":
            assert isinstance(self.average, AveragedModel)
            self.average.update_parameters(model)

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.average(*args, **kwargs)
