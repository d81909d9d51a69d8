"""What a loss, detector or fairness term may know about the current step besides the batch."""

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
        fractional_epoch: ``epoch + b / steps_per_epoch`` for the epoch's b-th batch (0-based),
            set by the trainer so per-epoch schedules move every step; None means ``epoch``.
    """

    epoch: int = 0
    step: int = 0
    training: bool = True
    progress: float = 0.0
    fractional_epoch: float | None = None

    @property
    def epoch_position(self) -> float:
        """The (fractional) epoch a schedule should read: ``fractional_epoch`` or ``epoch``."""
        return float(self.epoch if self.fractional_epoch is None else self.fractional_epoch)
