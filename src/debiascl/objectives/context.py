"""What a loss or detector may know about the current step besides the batch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepContext:
    """Training position of the current step.

    Attributes:
        epoch: 0-based epoch index.
        step: 0-based global optimisation step.
        training: False during evaluation passes (stateful parts must not update).
        progress: fraction of training done in [0, 1] (for schedules such as SogCLR's gamma).
    """

    epoch: int = 0
    step: int = 0
    training: bool = True
    progress: float = 0.0
