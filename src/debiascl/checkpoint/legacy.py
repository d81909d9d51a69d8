"""Reading checkpoints written before a layout change (kept small and explicit).

Logit scale (temperature) ownership: checkpoints written while the two-tower model held
``log_logit_scale`` (and the loss held no scale) load into the current layout, where the loss owns
the scale as ``loss_fn.scale.log_scale`` in the objective's state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The model's logit-scale entry in checkpoints written before the loss owned the temperature.
OLD_MODEL_KEY = "log_logit_scale"
#: Where a learned scale lives in the objective's state now (a fixed one: ``loss_fn.scale.fixed``).
SCALE_KEY = "loss_fn.scale.log_scale"
_PREFIX = "loss_fn.scale."
#: Hint for errors on checkpoints and configs from before the change.
SCALE_CHANGE = (
    "the temperature moved from the model to the loss (model.logit_scale_init -> "
    "loss.temperature = 1/scale, model.learn_logit_scale -> loss.learn_temperature)"
)


def split_logit_scale(
    model_state: dict[str, Any], objective_state: dict[str, Any], objective: nn.Module
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and objective states in the current layout.

    An old model entry ``log_logit_scale`` becomes the objective's learned scale when the loss
    learns one (image-text InfoNCE, where the model's scale was the trained one) and is dropped
    otherwise (every other loss trained at ``loss.temperature``, which the config still gives).
    An objective state without a scale entry gets the objective's own value (built from the
    config). Current checkpoints pass through unchanged.
    """
    model_state = dict(model_state)
    old = model_state.pop(OLD_MODEL_KEY, None)
    own = {k: v for k, v in objective.state_dict().items() if k.startswith(_PREFIX)}
    if not own or any(k in objective_state for k in own):
        return model_state, objective_state
    objective_state = {**objective_state, **own}
    if old is not None and SCALE_KEY in own:  # the old learned scale was the trained one
        objective_state[SCALE_KEY] = old
    return model_state, objective_state


#: Where a fixed scale lives in the objective's state.
FIXED_KEY = "loss_fn.scale.fixed"


def trained_logit_scale(
    model_state: dict[str, Any],
    objective_state: dict[str, Any],
    temperature: float,
    learnable: bool,
) -> float:
    """The logit scale 1 / t a checkpoint trained with, read without building the objective.

    Current checkpoints carry it in the objective's state (``loss_fn.scale.log_scale``, learned,
    or ``loss_fn.scale.fixed``); the value is computed as :class:`~debiascl.objectives.scale.
    LogitScale` computes it (float32), so it is bit-equal to the built objective's. Checkpoints
    from before the loss owned the scale: the model's ``log_logit_scale`` when the loss learns
    its temperature (``learnable``), else ``1 / temperature`` (as :func:`split_logit_scale`).
    """
    if SCALE_KEY in objective_state:
        return float(objective_state[SCALE_KEY].float().exp())
    if FIXED_KEY in objective_state:
        return float(objective_state[FIXED_KEY].float())
    old = model_state.get(OLD_MODEL_KEY)
    if learnable and old is not None:
        return float(torch.as_tensor(old).float().exp())
    return float(torch.tensor(1.0 / temperature, dtype=torch.float32))
