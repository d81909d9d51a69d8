"""Oracle detector: remove every negative that shares the anchor's label (an upper bound).

Needs labels (``labels=`` passed to the objective); it is supervised and only serves as the
ceiling that unsupervised detectors are compared against.
"""

from __future__ import annotations

import torch

from debiascl.errors import DataError
from debiascl.negatives.base import ScheduledDetector
from debiascl.negatives.context import StepContext
from debiascl.pairs import PairwiseBatch


class OracleDetector(ScheduledDetector):
    """Keep only negatives whose label differs from the anchor's.

    Args:
        start_epoch: first epoch whose masks remove negatives.
    """

    def __init__(self, start_epoch: int = 0) -> None:
        super().__init__(None, start_epoch)

    @torch.no_grad()
    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        if batch.anchor_labels is None or batch.candidate_labels is None:
            raise DataError(
                "the oracle detector needs class labels: pass labels=... to the objective (use a "
                "labelled dataset, or choose another detector such as glofnd)"
            )
        if not self.masking(ctx):
            return self.keep_all(batch)
        a, c = batch.anchor_labels[:, None], batch.candidate_labels[None, :]
        return (a != c) | (a < 0) | (c < 0)  # pairs with an unknown label (-1) are kept
