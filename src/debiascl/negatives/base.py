"""Common behaviour of the threshold detectors: alpha, start epochs, per-direction state."""

from __future__ import annotations

import torch

from debiascl.errors import ConfigError
from debiascl.negatives.context import StepContext
from debiascl.negatives.detector import FalseNegativeDetector
from debiascl.negatives.thresholds import check_alpha
from debiascl.pairs import PairwiseBatch


class ScheduledDetector(FalseNegativeDetector):
    """A detector that removes negatives from ``start_epoch`` on and may learn before that.

    Args:
        alpha: target fraction of negatives to remove, in (0, 1) (``None`` for detectors that do
            not use one, e.g. the oracle).
        start_epoch: first epoch whose masks remove negatives (before it every negative is kept,
            so the loss equals the unfiltered loss).
        update_start_epoch: first epoch that updates learned thresholds (default
            ``start_epoch``); set it earlier so thresholds have converged when masking starts.
    """

    def __init__(
        self,
        alpha: float | None,
        start_epoch: int = 0,
        update_start_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha) if alpha is not None else None
        if start_epoch < 0 or (update_start_epoch is not None and update_start_epoch < 0):
            raise ConfigError(
                f"start epochs must be >= 0, got start_epoch={start_epoch}, "
                f"update_start_epoch={update_start_epoch}"
            )
        self.start_epoch = int(start_epoch)
        self.update_start_epoch = (
            self.start_epoch if update_start_epoch is None else int(update_start_epoch)
        )

    def masking(self, ctx: StepContext) -> bool:
        """True when this step's mask removes negatives."""
        return ctx.epoch >= self.start_epoch

    def updating(self, ctx: StepContext) -> bool:
        """True when this step updates learned state."""
        return ctx.training and ctx.epoch >= self.update_start_epoch

    @staticmethod
    def keep_all(batch: PairwiseBatch) -> torch.Tensor:
        return torch.ones_like(batch.neg_mask)
