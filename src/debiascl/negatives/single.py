"""One shared learned threshold per direction (GloFND's "single lambda" ablation).

The same update as GloFND, but lambda is one scalar learned from every anchor of the global batch:
d = alpha - (fraction of all negatives above lambda). The counts are summed over ranks with one
small all-reduce, so every rank holds the same lambda.
"""

from __future__ import annotations

import torch
from torch import nn

from debiascl.errors import ConfigError
from debiascl.negatives.base import ScheduledDetector
from debiascl.negatives.context import StepContext
from debiascl.negatives.glofnd import LAMBDA_COLUMNS, LAMBDA_DEFAULTS
from debiascl.negatives.thresholds import (
    ThresholdRule,
    batch_quantile,
    threshold_gradient,
)
from debiascl.pairs import PairwiseBatch
from debiascl.state.groups import direction_names
from debiascl.state.sync import all_reduce_sum_
from debiascl.state.tables import SampleTable


class SingleThresholdDetector(ScheduledDetector):
    """A single lambda shared by all anchors of a direction.

    Args: as :class:`~debiascl.negatives.glofnd.GloFNDDetector` (without ``num_samples``).
    ``init="batch_quantile"`` sets lambda on the first update to the mean over anchors of their
    batch (1 - alpha)-quantiles.
    """

    def __init__(
        self,
        alpha: float,
        mode: str = "image_image",
        directions: tuple[str, ...] | None = None,
        start_epoch: int = 0,
        update_start_epoch: int | None = None,
        optimizer: str = "adam",
        lr: float = 0.05,
        beta1: float = 0.9,
        beta2: float = 0.98,
        eps: float = 1e-8,
        init: str = "one",
    ) -> None:
        super().__init__(alpha, start_epoch, update_start_epoch)
        self.rule = ThresholdRule(optimizer, init, float(lr), float(beta1), float(beta2), eps)
        self.tables = nn.ModuleDict(
            {
                name: SampleTable(1, LAMBDA_COLUMNS, LAMBDA_DEFAULTS, sync=False, validate=False)
                for name in direction_names(mode, directions)
            }
        )

    @torch.no_grad()
    def _update(self, table: SampleTable, batch: PairwiseBatch, sim: torch.Tensor) -> torch.Tensor:
        assert self.alpha is not None
        zero = torch.zeros(1, dtype=torch.long, device=sim.device)
        lam, m, v, visits = table.read(zero).unbind(1)
        first = bool(visits[0] == 0) and self.rule.init == "batch_quantile"
        if first:
            q = batch_quantile(sim, batch.neg_mask, self.alpha)
            sums = torch.stack([q.sum(), torch.tensor(float(q.numel()), device=q.device)])
            sums = all_reduce_sum_(sums.double())
            new_lam = (sums[0] / sums[1]).float().view(1)
            new_m, new_v = m, v
        else:
            above, total = threshold_gradient(sim, batch.neg_mask, lam.expand(sim.shape[0]), 0.0)
            sums = all_reduce_sum_(torch.stack([above.sum(), total.sum()]).double())
            grad = (self.alpha - sums[0] / sums[1].clamp_min(1.0)).float().view(1)
            new_lam, new_m, new_v = self.rule.step(lam, m, v, grad, visits)
        table.write(zero, torch.stack([new_lam, new_m, new_v, visits + 1], dim=1))
        return new_lam

    @torch.no_grad()
    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        masking, updating = self.masking(ctx), self.updating(ctx)
        if not masking and not updating:
            return self.keep_all(batch)
        if batch.name not in self.tables:
            raise ConfigError(f"no threshold for a {batch.name!r} batch; check mode/directions")
        table: SampleTable = self.tables[batch.name]  # type: ignore[assignment]
        sim = batch.sim.detach().float()
        lam = self._update(table, batch, sim) if updating else table.data[:1, 0].to(sim.device)
        if not masking:
            return self.keep_all(batch)
        return sim <= lam

    def diagnostics(self) -> dict[str, float]:
        return {f"lambda/{name}/value": float(t.data[0, 0]) for name, t in self.tables.items()}
