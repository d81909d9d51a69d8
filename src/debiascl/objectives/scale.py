"""The logit scale 1 / temperature of a contrastive loss: fixed, or learned as in CLIP.

A :class:`~debiascl.objectives.base.PairLoss` built with a temperature owns one
:class:`LogitScale`; nothing else in a run (not the model) holds a temperature, so training and
evaluation (zero-shot, the fairness audit) use the same value.

Learned (Radford et al., 2021, Sec. 2.5): the module stores ``log(1 / t)`` as a parameter and the
cap ``max_scale`` is applied to the *stored* value after each optimiser step
(:meth:`LogitScale.clamp_`), never in the forward pass, so a value above the cap keeps its
gradient and can come back down.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from debiascl.errors import ConfigError, check


class LogitScale(nn.Module):
    """1 / temperature as a module; ``forward()`` returns the scalar scale (float32 tensor).

    Args:
        temperature: t > 0; the scale is 1 / t (the initial value when ``learnable``).
        learnable: learn log(1 / t) as an ``nn.Parameter``; otherwise a fixed buffer that is no
            parameter at all (nothing to optimise, nothing for DDP to wait for).
        max_scale: cap on the learned scale, applied by :meth:`clamp_` after each optimiser step
            (CLIP: 100, i.e. t >= 0.01).

    Raises:
        ConfigError: t <= 0, max_scale <= 0, or a learned scale that starts above its cap.
    """

    def __init__(self, temperature: float, learnable: bool = False, max_scale: float = 100.0):
        super().__init__()
        check(temperature > 0, f"temperature must be > 0, got {temperature}", ConfigError)
        check(max_scale > 0, f"max_logit_scale must be > 0, got {max_scale}", ConfigError)
        check(
            not learnable or 1.0 / temperature <= max_scale,
            f"the learned logit scale starts at 1/temperature = {1.0 / temperature:.4g}, above "
            f"loss.max_logit_scale = {max_scale:g}; raise loss.temperature or the cap",
            ConfigError,
        )
        self.learnable = bool(learnable)
        self.max_log_scale = math.log(max_scale)
        if self.learnable:
            log_scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
            self.log_scale = nn.Parameter(log_scale)
        else:
            # 1 / t itself (bit-equal to passing the number), persistent: the checkpoint records
            # the scale the run trained with.
            self.register_buffer("fixed", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        """The scale 1 / t (scalar; in the graph when learnable)."""
        return self.log_scale.exp() if self.learnable else self.fixed

    @property
    def value(self) -> float:
        """The current scale as a Python float."""
        return float(self.forward().detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        """Cap the stored learned scale at ``max_scale`` (call after each optimiser step)."""
        if self.learnable:
            self.log_scale.clamp_(max=self.max_log_scale)

    def extra_repr(self) -> str:
        return f"scale={self.value:.4g}, learnable={self.learnable}"
