"""InfoNCE as a :class:`PairLoss` (SimCLR NT-Xent, CLIP, with a keep-mask)."""

from __future__ import annotations

import torch

from debiascl.losses.infonce import at_least_float32, masked_info_nce
from debiascl.negatives.context import StepContext
from debiascl.objectives.base import LossTerms, PairLoss
from debiascl.pairs import PairwiseBatch


class InfoNCELoss(PairLoss):
    """Per-anchor InfoNCE: -log e^{p} / (e^{p} + sum_kept e^{n}).

    Supports a learned temperature (CLIP): ``InfoNCELoss(0.07, learn_temperature=True)``.
    """

    learns_temperature = True

    def forward(
        self,
        batch: PairwiseBatch,
        keep: torch.Tensor,
        logit_scale: torch.Tensor,
        ctx: StepContext,
    ) -> LossTerms:
        logits = batch.sim.to(at_least_float32(batch.sim.dtype)) * logit_scale
        pos = logits.gather(1, batch.pos_index[:, None])[:, 0]
        loss = masked_info_nce(pos, logits, batch.neg_mask & keep)
        return LossTerms(loss=loss, objective=loss.detach())
