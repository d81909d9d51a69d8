"""FNC baseline: remove each row's batch top-alpha negatives (a per-row batch quantile).

Huynh et al., "Boosting contrastive self-supervised learning with false negative cancellation",
WACV 2022, in its elimination form; GloFND's batch-only baseline. Each anchor row removes its
round(alpha * n) most similar negatives (n = the row's negatives), i.e. keeps s_ij below its batch
(1 - alpha)-quantile. Stateless.
"""

from __future__ import annotations

import torch

from debiascl.negatives.base import ScheduledDetector
from debiascl.negatives.thresholds import kth_largest
from debiascl.objectives.context import StepContext
from debiascl.pairs import PairwiseBatch


def batch_top_alpha_keep(sim: torch.Tensor, neg_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """(A, M) keep-mask removing the round(alpha * n_i) largest negatives of each row.

    Ties at the cut are removed together (a tie never splits identical similarities).
    """
    n = neg_mask.sum(1)
    k = torch.floor(n.double() * alpha + 0.5).long()
    if not bool((k > 0).any()):
        return torch.ones_like(neg_mask)
    cut = kth_largest(sim, neg_mask, k.clamp_min(1))
    cut = torch.where(k > 0, cut, torch.full_like(cut, float("inf")))
    return sim < cut[:, None]


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
