"""FNC baseline: remove each row's negatives above its batch (1 - alpha)-quantile.

Huynh et al., "Boosting contrastive self-supervised learning with false negative cancellation",
WACV 2022, in its elimination form; GloFND's batch-only baseline. Each anchor row keeps the
negatives with s_ij <= q_i, q_i its batch (1 - alpha)-quantile under the rule of
:mod:`debiascl.negatives.thresholds` (numpy's default quantile): ceil(alpha (n - 1)) of its n
negatives are removed when the similarities are distinct. Stateless.
"""

from __future__ import annotations

import torch

from debiascl.negatives.base import ScheduledDetector
from debiascl.negatives.context import StepContext
from debiascl.negatives.thresholds import batch_quantile
from debiascl.pairs import PairwiseBatch


def batch_top_alpha_keep(sim: torch.Tensor, neg_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """(A, M) keep-mask: False for the negatives above their row's batch (1 - alpha)-quantile.

    Args:
        sim: (A, M) float similarities.
        neg_mask: (A, M) bool negatives of each row.
        alpha: fraction in (0, 1).

    ceil(alpha * (n_i - 1)) negatives are removed per row when similarities are distinct; a tie
    at the cut is kept together. Warns when alpha * n_i < 1 (see
    :func:`~debiascl.negatives.thresholds.batch_quantile`). Entries outside ``neg_mask`` are True.
    """
    return (sim <= batch_quantile(sim, neg_mask, alpha)[:, None]) | ~neg_mask


class FNCDetector(ScheduledDetector):
    """Per-row batch-quantile removal (no state).

    Args:
        alpha: fraction of each row's negatives to remove, in (0, 1).
        start_epoch: first epoch whose masks remove negatives.
    """

    def __init__(self, alpha: float, start_epoch: int = 0) -> None:
        super().__init__(alpha, start_epoch)

    @torch.no_grad()
    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        if not self.masking(ctx):
            return self.keep_all(batch)
        assert self.alpha is not None
        return batch_top_alpha_keep(batch.sim.detach().float(), batch.neg_mask, self.alpha)
