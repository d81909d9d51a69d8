"""Closed-form group-gap terms: ``mean_gap``, ``fisher_gap`` and ``conditional_gap``.

Each sums a penalty of :mod:`debiascl.fairness.penalties` over the sensitive attributes and
returns ``{name: weight_at(epoch) * sum}``; logs ``<name>/<attribute>`` (the unweighted gap).
Unlike a discriminator these are recomputed from every batch and cannot be out-run
(``docs/experiments/fairness.md``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from debiascl.errors import ConfigError, DataError
from debiascl.fairness.penalties import (
    class_conditional_mean_gap,
    group_mean_gap,
    within_group_covariance,
)
from debiascl.fairness.terms.base import (
    FairnessTerm,
    TermInputs,
    TermSettings,
    TermSetup,
    register_term,
)

Losses = tuple[dict[str, torch.Tensor], dict[str, float]]


@register_term("mean_gap")
class MeanGapTerm(FairnessTerm):
    """Standardised group-mean gap (linear MMD; :func:`~.penalties.group_mean_gap`).

    With ``fairness.balance=label`` the rows are weighted by P(a)/P(a|y), so class differences
    are not counted as group gaps.
    """

    class Settings(TermSettings):
        name: Literal["mean_gap"]

    def _gap(self, x: TermInputs, j: int, k: int) -> torch.Tensor:
        wj = None if x.weights is None else x.weights[:, j]
        return group_mean_gap(x.z, x.attrs[:, j], k, wj)

    def forward(self, x: TermInputs) -> Losses:
        logs: dict[str, float] = {}
        gap = x.z.new_zeros(())
        for j, spec in enumerate(self.attributes):
            g = self._gap(x, j, spec.num_classes)
            logs[f"{self.name}/{spec.name}"] = float(g.detach())
            gap = gap + g
        return {self.name: self.weight_at(x.epoch) * gap}, logs


@register_term("fisher_gap")
class FisherGapTerm(MeanGapTerm):
    """Group-mean gap in the metric of the within-group covariance (Fisher separation).

    ``momentum`` > 0 replaces the batch covariance by a bias-corrected running estimate (one per
    attribute, checkpointed), so a small ``shrinkage`` can whiten low-variance directions.
    """

    class Settings(TermSettings):
        name: Literal["fisher_gap"]  # type: ignore[assignment]
        shrinkage: float = Field(
            0.1, gt=0, le=1, description="shrinkage of the covariance towards tr(S)/D * I"
        )
        momentum: float = Field(
            0.0, ge=0, lt=1, description="decay per step of the running covariance (0: batch)"
        )

    def __init__(self, settings: Settings, setup: TermSetup) -> None:
        super().__init__(settings, setup)
        self.shrinkage = float(settings.shrinkage)
        self.momentum = float(settings.momentum)
        if self.momentum > 0:
            d, n_att = int(setup.input_dim), len(self.attributes)
            self.register_buffer("cov", torch.zeros(n_att, d, d))
            self.register_buffer("cov_steps", torch.zeros(n_att))

    def _metric(self, x: TermInputs, j: int, k: int, wj: torch.Tensor | None):
        """EMA of the within-group covariance of attribute j, Adam-style bias-corrected."""
        if self.momentum == 0:
            return None
        m = self.momentum
        usable = x.attrs[:, j] >= 0  # a batch without usable rows (e.g. every label unknown
        if wj is not None:  # under fairness.balance=label) must not decay the estimate to 0
            usable = usable & (wj > 0)
        if x.training and bool(usable.any()):
            cov = within_group_covariance(x.z, x.attrs[:, j], k, wj).to(self.cov)
            self.cov[j] = m * self.cov[j] + (1 - m) * cov
            self.cov_steps[j] += 1
        steps = float(self.cov_steps[j])
        return None if steps == 0 else self.cov[j] / (1 - m**steps)

    def _gap(self, x: TermInputs, j: int, k: int) -> torch.Tensor:
        wj = None if x.weights is None else x.weights[:, j]
        metric = self._metric(x, j, k, wj)
        return group_mean_gap(x.z, x.attrs[:, j], k, wj, True, self.shrinkage, metric)


@register_term("conditional_gap")
class ConditionalGapTerm(MeanGapTerm):
    """Group-mean gap within each class (:func:`~.penalties.class_conditional_mean_gap`).

    Needs class labels. ``momentum`` > 0 pools earlier batches' decayed (class, group) sums into
    the value (this rank's rows only; checkpointed). Sample weights are not used.
    """

    class Settings(TermSettings):
        name: Literal["conditional_gap"]  # type: ignore[assignment]
        momentum: float = Field(
            0.0, ge=0, lt=1, description="decay per step of the pooled (class, group) sums"
        )

    def __init__(self, settings: Settings, setup: TermSetup) -> None:
        super().__init__(settings, setup)
        if setup.num_classes < 2:
            raise ConfigError(
                "fairness term conditional_gap needs class labels in the training data (at "
                "least two classes); use labelled data or another term"
            )
        self.momentum = float(settings.momentum)
        k_max = max(spec.num_classes for spec in self.attributes)
        n_att, c, d = len(self.attributes), int(setup.num_classes), int(setup.input_dim)
        self.register_buffer("sums", torch.zeros(n_att, c, k_max, d))
        self.register_buffer("counts", torch.zeros(n_att, c, k_max))

    def _gap(self, x: TermInputs, j: int, k: int) -> torch.Tensor:
        y = x.labels
        if y is None:
            raise DataError(
                "fairness term conditional_gap needs class labels in the batch; use labelled "
                "data or another term"
            )
        if y.shape[0] != x.z.shape[0]:
            raise DataError(f"{y.shape[0]} labels for {x.z.shape[0]} fairness rows")
        if int(y.max()) >= self.sums.shape[1]:
            raise DataError(
                f"class label {int(y.max())} is out of range for the "
                f"{self.sums.shape[1]} classes of the training data"
            )
        m = self.momentum
        prior = (m * self.sums[j, :, :k], m * self.counts[j, :, :k]) if m > 0 else (None, None)
        g, sums, counts = class_conditional_mean_gap(
            x.z, x.attrs[:, j], y, k, self.sums.shape[1], *prior
        )
        if m > 0 and x.training:
            self.sums[j, :, :k] = m * self.sums[j, :, :k] + sums.to(self.sums)
            self.counts[j, :, :k] = m * self.counts[j, :, :k] + counts.to(self.counts)
        return g
