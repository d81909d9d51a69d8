"""SogCLR global contrastive loss as a :class:`PairLoss` owning its per-sample u tables.

Unimodal (SimCLR layout): one u per image. Each view's row uses its own fresh estimate
u_v = (1 - gamma) u + gamma g_v in its weights and the table stores the mean of the two view
estimates (as LibAUC's SogCLR does). Bimodal (CLIP layout): u_img for image anchors and u_txt for
text anchors, keyed by ``PairwiseBatch.name``, on logits relative to the positive (DESIGN 3.2).

Removed negatives (the keep-mask from a false-negative detector) leave both g (the mean over kept
negatives) and the surrogate (normalised by the kept count n_i).
"""

from __future__ import annotations

import torch
from torch import nn

from debiascl.errors import ConfigError
from debiascl.losses.global_contrastive import (
    cosine_gamma,
    exp_all_but_positive,
    masked_exp,
    moving_average_log_u,
    sogclr_objective,
    sogclr_surrogate_from_exp,
)
from debiascl.negatives.context import StepContext
from debiascl.negatives.mask_counts import kept_negatives_float
from debiascl.objectives.base import LossTerms, PairLoss
from debiascl.pairs import PairwiseBatch, excluded_columns
from debiascl.state.groups import anchor_groups, direction_names
from debiascl.state.sharded import Sharding, make_table
from debiascl.state.tables import Placement, SampleTable

U_COLUMNS = ("log_u", "visits")


class GlobalContrastiveLoss(PairLoss):
    """Per-anchor SogCLR loss with moving-average estimators u (tables of size N).

    Args:
        num_samples: size N of the sample-id space.
        mode: ``"image_image"`` or ``"image_text"``.
        gamma: moving-average rate (``gamma_schedule="constant"``) or its start value (cosine).
        gamma_schedule: ``"constant"`` or ``"cosine"`` (from ``gamma`` down to ``gamma_min``
            over ``ctx.progress``; the bimodal reference uses 1.0 -> 0.2).
        gamma_min: final gamma of the cosine schedule.
        directions: image_text directions to allocate tables for (default both).
        relative: use logits relative to the positive (default: True for image_text only).
        placement: table placement, ``"device"`` or ``"cpu"``.
        sharding: ``"replicated"`` (every rank holds all N rows) or ``"sharded"`` (each rank
            holds N / world_size; see :mod:`debiascl.state.sharded`).
        temperature: the fixed temperature t this loss owns (logit scale 1 / t); ``None``: the
            caller passes ``logit_scale``. SogCLR's u tables are moving averages at one scale, so
            the temperature is never learned here.

    ``forward`` returns :class:`LossTerms` with ``loss`` the surrogate and ``objective`` the
    global objective -l_pos + log u (what to log). Tables update only when ``ctx.training``.
    A batch of stacked CLIP directions (``batch.parts``, from
    :func:`~debiascl.pairs.clip_pairs_stacked`) is computed in one pass with each block's rows
    read from and written to its direction's table: the same values as one call per direction.
    """

    stacks_directions = True

    def __init__(
        self,
        num_samples: int,
        mode: str = "image_image",
        gamma: float = 0.9,
        gamma_schedule: str = "constant",
        gamma_min: float = 0.2,
        directions: tuple[str, ...] | None = None,
        relative: bool | None = None,
        placement: Placement = "device",
        sharding: Sharding = "replicated",
        temperature: float | None = None,
    ) -> None:
        super().__init__(temperature)
        if not 0.0 < gamma <= 1.0 or not 0.0 < gamma_min <= 1.0:
            raise ConfigError(f"gamma and gamma_min must be in (0, 1], got {gamma}, {gamma_min}")
        if gamma_schedule not in ("constant", "cosine"):
            raise ConfigError(
                f"gamma_schedule must be 'constant' or 'cosine', got {gamma_schedule!r}"
            )
        self.mode = mode
        self.gamma = float(gamma)
        self.gamma_schedule = gamma_schedule
        self.gamma_min = float(gamma_min)
        self.relative = (mode == "image_text") if relative is None else bool(relative)
        self.tables = nn.ModuleDict(
            {
                name: make_table(num_samples, U_COLUMNS, [0.0, 0.0], placement, sharding)
                for name in direction_names(mode, directions)
            }
        )

    def gamma_at(self, progress: float) -> float:
        """The moving-average rate at training progress in [0, 1]."""
        if self.gamma_schedule == "cosine":
            return cosine_gamma(self.gamma, self.gamma_min, progress)
        return self.gamma

    def table(self, name: str) -> SampleTable:
        if name not in self.tables:
            raise ConfigError(
                f"this SogCLR loss has tables for {list(self.tables)} but got a {name!r} batch; "
                f"build it with the objective's mode and directions"
            )
        return self.tables[name]  # type: ignore[return-value]

    def forward(
        self,
        batch: PairwiseBatch,
        keep: torch.Tensor,
        logit_scale: torch.Tensor,
        ctx: StepContext,
    ) -> LossTerms:
        """Surrogate and objective per anchor.

        Args:
            batch: one direction of the contrastive batch (A anchors x M candidates).
            keep: (A, M) bool keep-mask from the detector (False removes a negative);
                ``batch.neg_mask`` itself when every negative is kept.
            logit_scale: 1 / temperature (scalar tensor, may require grad).
            ctx: training position (``progress`` drives the cosine gamma schedule).
        """
        tables = [self.table(name) for name in (batch.parts or (batch.name,))]
        scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=batch.sim.device)
        gamma = self.gamma_at(ctx.progress)
        with torch.no_grad():
            # One fused pass for the masked exponentials, reused by log g and the surrogate.
            if keep is batch.neg_mask and batch.negatives_all_but_positive:
                # every negative kept (no detector): the same values without reading a mask
                e, shift, total = exp_all_but_positive(batch.sim, scale, batch.pos_index)
                count = torch.full_like(batch.pos_index, batch.sim.shape[1] - 1)
            elif keep is batch.neg_mask and (cols := excluded_columns(batch)) is not None:
                # SimCLR layout, every negative kept: all but the self and positive columns
                e, shift, total = exp_all_but_positive(batch.sim, scale, cols)
                count = torch.full_like(batch.pos_index, batch.sim.shape[1] - cols.shape[1])
            else:
                # float(neg_mask & keep) and its row counts
                mask, count = kept_negatives_float(batch, keep)
                e, shift, total = masked_exp(batch.sim, scale, mask)
            pos = batch.sim.detach().float().gather(1, batch.pos_index[:, None])[:, 0] * scale
            if self.relative:  # x = l - l_pos shares e; only the shift moves
                shift = shift - pos
            log_g = shift + torch.log(total) - torch.log(count.to(torch.float32))
            groups = anchor_groups(batch)
            rows = _read_rows(tables, groups.ids, batch.ids_checked_below)
            visits = rows[:, 1]
            first = groups.expand(visits == 0)
            log_u = moving_average_log_u(groups.expand(rows[:, 0]), log_g, gamma, first)
            if ctx.training:
                new = torch.stack([groups.pool_logmeanexp(log_u), visits + 1], dim=1)
                _write_rows(tables, groups.ids, new, batch.ids_checked_below)
        loss = sogclr_surrogate_from_exp(
            batch.sim, scale, e, total, shift, count, log_u, batch.pos_index, self.relative
        )
        objective = sogclr_objective(pos, log_u, relative=self.relative)
        return LossTerms(loss=loss, objective=objective, logs={"gamma": gamma})


def _read_rows(
    tables: list[SampleTable], ids: torch.Tensor, checked_below: int | None
) -> torch.Tensor:
    """Rows of ``ids``, split into one equal block per table (one table: a plain read)."""
    if len(tables) == 1:
        return tables[0].read(ids, checked_below)
    blocks = ids.chunk(len(tables))
    return torch.cat([t.read(i, checked_below) for t, i in zip(tables, blocks, strict=True)])


def _write_rows(
    tables: list[SampleTable], ids: torch.Tensor, rows: torch.Tensor, checked_below: int | None
) -> None:
    """Write ``rows`` of ``ids``, one equal block per table, in order (collectives under DDP)."""
    n = len(tables)
    if n == 1:
        tables[0].write(ids, rows, checked_below)
        return
    for t, i, r in zip(tables, ids.chunk(n), rows.chunk(n), strict=True):
        t.write(i, r, checked_below)
