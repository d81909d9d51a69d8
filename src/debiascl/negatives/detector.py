"""The false-negative detector interface: a keep-mask over the negatives of a batch.

A *detector* turns a :class:`~debiascl.pairs.PairwiseBatch` into a keep-mask over negatives
(False = declared false negative, removed from the loss's denominator) and owns its own state
(e.g. GloFND's per-sample thresholds) as an ``nn.Module`` so it travels in ``state_dict``.
Detectors take plain typed constructor arguments; :mod:`debiascl.compose` builds the configured
one from :data:`debiascl.registry.DETECTORS`.
"""

from __future__ import annotations

import torch
from torch import nn

from debiascl.negatives.context import StepContext
from debiascl.negatives.mask_counts import kept_counts
from debiascl.pairs import PairwiseBatch


class FalseNegativeDetector(nn.Module):
    """Base class: keep-mask over the negatives of one direction of a contrastive batch.

    ``forward`` returns an (A, M) bool tensor; True keeps the candidate in the anchor's
    denominator. Entries outside ``batch.neg_mask`` are ignored by the losses. Detectors may update
    their state when ``ctx.training`` is True and must do so under ``torch.no_grad`` on detached
    float32 similarities.
    """

    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError


class NoDetector(FalseNegativeDetector):
    """Keeps every negative (plain contrastive learning)."""

    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        return torch.ones_like(batch.neg_mask)


def keep_at_least_one(keep: torch.Tensor, batch: PairwiseBatch) -> torch.Tensor:
    """Guarantee one kept negative per anchor.

    Rows that would keep no valid negative keep their least similar one instead (the candidate
    least likely to be a false negative), so every denominator stays defined.

    Args:
        keep: (A, M) bool keep-mask.
        batch: the batch the mask belongs to.

    Returns:
        (A, M) bool mask, equal to ``keep`` on rows that already keep a negative.
    """
    counts = kept_counts(batch, keep)  # (remembered for the loss)
    if counts.device.type == "cpu" and (counts.numel() == 0 or counts.numpy().min() > 0):
        return keep  # on the host: one numpy reduction instead of three tensor ops
    empty = counts == 0
    if not bool(empty.any()):
        return keep
    sim = batch.sim.detach().float().masked_fill(~batch.neg_mask, float("inf"))
    least = sim.argmin(dim=1)
    rescue = torch.zeros_like(keep)
    rescue[torch.arange(keep.shape[0], device=keep.device), least] = True
    return keep | (rescue & empty[:, None])
