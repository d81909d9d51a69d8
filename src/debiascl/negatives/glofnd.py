"""GloFND: global false-negative discovery with a per-anchor threshold learned on the fly.

Balmaseda, Wang, Lin and Yang, "Discovering Global False Negatives On the Fly for
Self-supervised Contrastive Learning", ICML 2025 (DESIGN 3.3). Each sample i owns a threshold
lambda_i that tracks the (1 - alpha)-quantile of its similarities to *all* its negatives in the
dataset; negatives with s_ij > lambda_i are removed from i's denominator.

Each step, for the anchors in the batch only (O(B x 2B), independent of N):

1. read (lambda, m, v, visits) of the batch's ids from one packed table;
2. gradient d_i = alpha - (fraction of i's batch negatives above lambda_i); unimodal batches pool
   both views' rows of image i into one gradient;
3. per-sample Adam (the reference code's rule; bias-corrected with the sample's own update count)
   or projected SGD (the paper's rule), then clip to [-1, 1]; with ``init="batch_quantile"`` a
   sample's first visit instead sets lambda_i to its batch (1 - alpha)-quantile;
4. write the rows back (all-gathered across ranks, so every rank's table is identical);
5. keep-mask with the *new* lambda: keep s_ij <= lambda_i.

All of it runs under ``no_grad`` on detached float32 similarities (fp16/bf16 cosines are too
coarse near the quantile).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from debiascl.errors import ConfigError
from debiascl.negatives.base import ScheduledDetector
from debiascl.negatives.context import StepContext
from debiascl.negatives.host_update import host_threshold_update
from debiascl.negatives.mask_counts import keep_at_or_below, negative_counts
from debiascl.negatives.start_rules import TextAgreementStart
from debiascl.negatives.thresholds import (
    ThresholdRule,
    batch_quantile,
    threshold_gradient,
)
from debiascl.pairs import PairwiseBatch, excluded_columns
from debiascl.state.groups import AnchorGroups, anchor_groups, direction_names
from debiascl.state.sharded import ShardedSampleTable, Sharding, make_table
from debiascl.state.summary import summarize
from debiascl.state.tables import Placement, SampleTable

LAMBDA_COLUMNS = ("lambda", "m", "v", "visits")
LAMBDA_DEFAULTS = (1.0, 0.0, 0.0, 0.0)
#: ``start_rule`` values of the GloFND-type detectors
START_RULES = ("epoch", "converged", "text_agreement")


def pooled_quantile(
    sim: torch.Tensor,
    neg_mask: torch.Tensor,
    groups: AnchorGroups,
    alpha: float | torch.Tensor,
    subset: torch.Tensor | None = None,
    counts: list[int] | None = None,
) -> torch.Tensor:
    """Batch (1 - alpha)-quantile of each id's negatives (the rule of :func:`batch_quantile`).

    Unimodal ids pool the negatives of both views' rows. Returns (G,), or (len(subset),) for the
    group positions in ``subset`` only (a partial sort of just those rows). ``alpha`` is a float
    or a (G,) tensor of per-id fractions. ``counts``: the pooled number of negatives of each
    returned id, when the caller has them (not for the ``general`` layout).
    """
    if groups.layout == "general":
        row_alpha = groups.expand(alpha) if isinstance(alpha, torch.Tensor) else alpha
        q = batch_quantile(sim, neg_mask, row_alpha)
        q = groups.pool_sum(q) / groups.rows_per_id()  # mean of the rows' quantiles
        return q if subset is None else q[subset]
    if groups.layout == "two_views":
        g = groups.ids.shape[0]
        if subset is None:  # each id's two rows side by side
            sim, neg_mask = (
                torch.cat([sim[:g], sim[g:]], dim=1),
                torch.cat([neg_mask[:g], neg_mask[g:]], dim=1),
            )
        else:  # index_select: several times faster than advanced indexing for a few rows
            second = subset + g
            sim = torch.cat([sim.index_select(0, subset), sim.index_select(0, second)], dim=1)
            neg_mask = torch.cat(
                [neg_mask.index_select(0, subset), neg_mask.index_select(0, second)], dim=1
            )
    elif subset is not None:
        sim, neg_mask = sim.index_select(0, subset), neg_mask.index_select(0, subset)
    if isinstance(alpha, torch.Tensor) and subset is not None:
        alpha = alpha[subset]
    return batch_quantile(sim, neg_mask, alpha, counts)


class GloFNDDetector(ScheduledDetector):
    """Per-anchor learned thresholds (one table per direction: lambda_img and lambda_txt).

    Args:
        num_samples: size N of the sample-id space.
        alpha: target fraction of negatives to remove, in (0, 1).
        mode: ``"image_image"`` (one lambda per image, both views pooled) or ``"image_text"``
            (lambda_img for image -> text, lambda_txt for text -> image).
        directions: image_text directions to allocate tables for (default both).
        start_epoch / update_start_epoch: see :class:`ScheduledDetector`.
        optimizer: ``"adam"`` (per-sample Adam) or ``"sgd"`` (projected SGD; starting from 1 it
            needs a large lr, around 5, to reach the quantile in a short run).
        lr, beta1, beta2, eps: update hyperparameters (reference: 0.05, 0.9, 0.98, 1e-8).
        init: ``"one"`` (lambda starts at 1 and filters nothing) or ``"batch_quantile"`` (a
            sample's first update sets lambda to its batch quantile).
        moment_init: Adam moments at the quantile initialisation (``init="batch_quantile"``).
            ``"zero"``: m = v = 0 with Adam's bias correction, so the sample's next update moves
            lambda by exactly lr in the sign of one noisy gradient. ``"binomial"``: the moments
            are set to what is known at the quantile, m = 0 (expected gradient) and
            v = alpha (1 - alpha) / n (the variance of the fraction of n independent batch
            negatives above the true quantile), and used without bias correction, so steps
            start small and grow only as gradients agree in sign.
        start_rule: ``"epoch"`` (mask from ``start_epoch`` on) or ``"converged"`` (mask from the
            first epoch >= ``start_epoch`` at whose start the mean threshold, averaged over the
            directions, moved by at most ``start_tolerance`` (cosine units) over the previous
            epoch, with at least 99% of the samples visited). It needs ``update_start_epoch`` <
            ``start_epoch``, or the thresholds never move before masking. Once started, masking
            stays on.
            ``"text_agreement"``: mask from the first epoch >= ``start_epoch`` after which the
            share of would-be-removed pairs (negatives above the learned thresholds, counted
            while the thresholds learn) whose texts agree under ``text_embeddings`` (text cosine
            >= ``text_threshold``) reached ``start_agreement``
            (:class:`~debiascl.negatives.start_rules.TextAgreementStart`).
        start_tolerance: the convergence tolerance of ``start_rule="converged"``.
        text_embeddings: (N, D) frozen text embedding per sample id, for
            ``start_rule="text_agreement"`` (ignored by the other rules).
        text_threshold, start_agreement: the text_agreement rule's settings.
        reset_on_resume: restore every threshold to its initial state after ``load_state_dict``.
        placement: table placement, ``"device"`` or ``"cpu"``.
        sharding: ``"replicated"`` (every rank holds all N rows) or ``"sharded"`` (each rank
            holds N / world_size; see :mod:`debiascl.state.sharded`).
    """

    def __init__(
        self,
        num_samples: int,
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
        moment_init: str = "zero",
        reset_on_resume: bool = False,
        placement: Placement = "device",
        sharding: Sharding = "replicated",
        start_rule: str = "epoch",
        start_tolerance: float = 0.01,
        text_embeddings: torch.Tensor | None = None,
        text_threshold: float = 0.95,
        start_agreement: float = 0.5,
    ) -> None:
        super().__init__(alpha, start_epoch, update_start_epoch)
        if start_rule not in START_RULES:
            raise ConfigError(
                f"start_rule must be one of {', '.join(START_RULES)}, got {start_rule!r}"
            )
        if start_rule == "converged" and (
            start_tolerance <= 0 or self.update_start_epoch >= max(self.start_epoch, 1)
        ):
            raise ConfigError(
                "start_rule='converged' needs start_tolerance > 0 and update_start_epoch below "
                f"start_epoch (got tolerance {start_tolerance}, update_start_epoch "
                f"{self.update_start_epoch}, start_epoch {self.start_epoch}); e.g. "
                "update_start_epoch=0, start_epoch=1"
            )
        self.start_rule = start_rule
        self.start_tolerance = float(start_tolerance)
        # started (0/1), mean lambda at the start of the last seen epoch, last seen epoch; only
        # with the converged rule, so checkpoints of the epoch rule keep their keys
        state = torch.tensor([0.0, float("nan"), -1.0]) if start_rule == "converged" else None
        self.register_buffer("start_state", state)
        self.agreement_start: TextAgreementStart | None = None
        if start_rule == "text_agreement":
            self.agreement_start = TextAgreementStart(
                text_embeddings, text_threshold, start_agreement
            )
        self.rule = ThresholdRule(optimizer, init, float(lr), float(beta1), float(beta2), eps)
        if moment_init not in ("zero", "binomial"):
            raise ConfigError(
                f"GloFND moment_init must be 'zero' or 'binomial', got {moment_init!r}"
            )
        if moment_init == "binomial" and (init != "batch_quantile" or optimizer != "adam"):
            raise ConfigError(
                "GloFND moment_init='binomial' initialises Adam's moments at the batch quantile; "
                "use it with init='batch_quantile' and optimizer='adam'"
            )
        self.moment_init = moment_init
        self.reset_on_resume = reset_on_resume
        self.tables = nn.ModuleDict(
            {
                name: make_table(num_samples, LAMBDA_COLUMNS, LAMBDA_DEFAULTS, placement, sharding)
                for name in direction_names(mode, directions)
            }
        )
        self.register_load_state_dict_post_hook(_reset_after_load)
        #: CPU tables: run the per-id update in numpy (same bits as the torch path, which tests
        #: and GPU tables use)
        self.host_update = True

    def table(self, name: str) -> SampleTable:
        if name not in self.tables:
            raise ConfigError(
                f"this GloFND detector has tables for {list(self.tables)} but got a {name!r} "
                f"batch; build it with the objective's mode and directions"
            )
        return self.tables[name]  # type: ignore[return-value]

    def thresholds(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """(n,) current lambda of ``ids`` in direction ``name`` (e.g. ``"image"``)."""
        return self.table(name).read(ids)[:, 0]

    def anchor_alpha(self, groups: AnchorGroups) -> float | torch.Tensor:
        """Target fraction of each id of the batch: a float, or a (G,) tensor (subclasses)."""
        assert self.alpha is not None
        return self.alpha

    def masking(self, ctx: StepContext) -> bool:
        """True when this step's mask removes negatives (see ``start_rule``)."""
        rule = self.agreement_start
        if rule is not None:
            if ctx.training:
                rule.new_epoch(ctx.epoch, self.start_epoch)
            return rule.started and ctx.epoch >= self.start_epoch
        if self.start_state is None:
            return super().masking(ctx)
        if ctx.training and ctx.epoch > int(self.start_state[2]):
            self._check_converged(ctx.epoch)
        return bool(self.start_state[0] > 0) and ctx.epoch >= self.start_epoch

    @torch.no_grad()
    def _check_converged(self, epoch: int) -> None:
        """At an epoch's first step: compare the mean thresholds with the previous epoch's.

        The diagnostics are exact and partition-free (sharded tables reduced over ranks), so
        every rank, and a replicated run, takes the same decision."""
        assert self.start_state is not None
        diag = self.diagnostics()
        means = [diag.get(f"lambda/{n}/mean", float("nan")) for n in self.tables]
        visited = min(diag[f"lambda/{n}/visited_fraction"] for n in self.tables)
        mean = sum(means) / len(means)
        prev = float(self.start_state[1])
        if (
            epoch >= self.start_epoch
            and visited >= 0.99
            and abs(mean - prev) <= self.start_tolerance  # False while prev is NaN
        ):
            self.start_state[0] = 1.0
        self.start_state[1] = mean if visited >= 0.99 else float("nan")
        self.start_state[2] = float(epoch)

    @torch.no_grad()
    def update(self, batch: PairwiseBatch, groups: AnchorGroups, sim: torch.Tensor) -> torch.Tensor:
        """One threshold update for the batch's anchors; returns their new (G,) lambdas."""
        alpha = self.anchor_alpha(groups)
        table = self.table(batch.name)
        rows = table.read(groups.ids, batch.ids_checked_below)
        lam, m, v, visits = rows.unbind(1)
        host = (
            self.host_update
            and rows.device.type == "cpu"
            and groups.layout != "general"
            and not isinstance(alpha, torch.Tensor)
        )
        neg_counts = negative_counts(batch)
        any_fresh, counts = False, None
        if self.rule.init == "batch_quantile":
            if host:  # first visits and their pooled negative counts on the host
                first_np = rows.numpy()[:, 3] == 0
                fresh_np = np.flatnonzero(first_np)
                any_fresh = fresh_np.size > 0
                if any_fresh:
                    first, fresh = torch.from_numpy(first_np), torch.from_numpy(fresh_np)
                    per_row = neg_counts.numpy()
                    if groups.layout == "two_views":
                        per_row = per_row[: len(first_np)] + per_row[len(first_np) :]
                    counts = per_row[fresh_np].tolist()
            else:
                first = visits == 0
                fresh = first.nonzero().squeeze(1)
                any_fresh = fresh.numel() > 0
            if any_fresh:  # partial sorts only for never-seen ids (the first epoch)
                lam = lam.index_put(
                    (fresh,), pooled_quantile(sim, batch.neg_mask, groups, alpha, fresh, counts)
                )
        above, total = threshold_gradient(
            sim, batch.neg_mask, groups.expand(lam), self.alpha, neg_counts, excluded_columns(batch)
        )
        warm = self.moment_init == "binomial"
        if host:  # the same operations in numpy: far less dispatch per (G,) op
            new_lam, new_rows = host_threshold_update(
                self.rule,
                alpha,
                warm,
                groups.layout == "two_views",
                rows,
                lam,
                above,
                total,
                first if any_fresh else None,
            )
            table.write(groups.ids, new_rows, batch.ids_checked_below)
            return new_lam
        n = groups.pool_sum(total).clamp_min(1.0)
        grad = alpha - groups.pool_sum(above) / n
        new_lam, new_m, new_v = self.rule.step(lam, m, v, grad, visits, bias_correction=not warm)
        if any_fresh:
            # The initialising visit takes no gradient step: the quantile is already the estimate.
            new_lam = torch.where(first, lam, new_lam)
            new_m = torch.where(first, m, new_m)
            # Binomial: the variance of the batch fraction above the true quantile (a lower
            # bound when negatives are correlated, e.g. two views of one image; v adapts).
            init_v = alpha * (1.0 - alpha) / n if warm else v
            new_v = torch.where(first, init_v, new_v)
        new_rows = torch.stack([new_lam, new_m, new_v, visits + 1], dim=1)
        table.write(groups.ids, new_rows, batch.ids_checked_below)
        return new_lam

    @torch.no_grad()
    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        """(A, M) keep-mask: True where s_ij <= lambda_i (every entry before ``start_epoch``)."""
        masking, updating = self.masking(ctx), self.updating(ctx)
        if not masking and not updating:
            return self.keep_all(batch)
        sim = batch.sim.detach().float()
        groups = anchor_groups(batch)
        if updating:
            lam = self.update(batch, groups, sim)
        else:
            lam = self.table(batch.name).read(groups.ids, batch.ids_checked_below)[:, 0]
        rule = self.agreement_start
        if rule is not None and updating and not rule.started:
            rule.observe(batch, sim, groups.expand(lam))  # candidates before masking starts
        if not masking:
            return self.keep_all(batch)
        return keep_at_or_below(batch, sim, groups.expand(lam))

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Distribution of the learned thresholds over visited samples (per direction).

        ``lambda/<direction>/`` ``visited_fraction``, ``mean``, ``std``, ``min``, ``max`` and the
        exact ``p10`` / ``p50`` / ``p90`` (linear interpolation) over every visited id. O(rows
        held) once per call (meant per epoch). A sharded table is summarised from each rank's
        own rows by a few small all-reduces (:func:`~debiascl.state.summary.summarize`: no rank
        holds the whole table), with the same bits as the replicated table; so it is a
        collective, and every rank calls it at the same point.
        """
        out: dict[str, float] = {}
        if self.agreement_start is not None:
            out.update(self.agreement_start.diagnostics())
        for name, table in self.tables.items():
            sharded = isinstance(table, ShardedSampleTable) and table.world_size > 1
            data = table.data
            stats = summarize(data[:, 0][data[:, 3] > 0], collective=sharded)
            prefix = f"lambda/{name}"
            out[f"{prefix}/visited_fraction"] = stats.pop("count") / table.num_samples
            out.update({f"{prefix}/{key}": value for key, value in stats.items()})
        return out

    def reset(self) -> None:
        """Restore every threshold, moment and visit count to its initial value."""
        for table in self.tables.values():
            table.reset()  # type: ignore[operator]
        if self.start_state is not None:
            self.start_state.copy_(torch.tensor([0.0, float("nan"), -1.0]))
        if self.agreement_start is not None:
            self.agreement_start.reset()


def _reset_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, GloFNDDetector) and module.reset_on_resume:
        module.reset()
