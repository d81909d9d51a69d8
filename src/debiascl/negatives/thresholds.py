"""Threshold maths shared by the detectors: batch quantiles and the lambda update rules.

GloFND (Balmaseda et al., ICML 2025) learns lambda_i, the (1 - alpha)-quantile of anchor i's
similarities R_i to all its negatives, by minimising

    f(nu) = nu * alpha + mean_{r in R_i} max(r - nu, 0)   over nu in [-1, 1],

whose minimiser is the k-th largest r with k = ceil(alpha |R_i|). A batch gives the stochastic
(sub)gradient d_i = alpha - (fraction of anchor i's batch negatives with s_ij > lambda_i).
Everything here is pure, no-grad tensor maths on float32 similarities.

The batch quantile rule (one rule for FNC's removal and the ``batch_quantile`` initialisation of
GloFND and its single-threshold variant): the batch (1 - alpha)-quantile q of a row's n negatives
is numpy's and torch's default quantile (linear interpolation between order statistics, 0-based
position (1 - alpha)(n - 1) in ascending order), and a negative is removed when s > q. With
distinct similarities that removes exactly ceil(alpha (n - 1)) negatives per row; negatives tied
at the cut are kept together. When alpha * n < 1 a batch cannot resolve the fraction alpha (the
rule still removes one negative per row, a fraction 1/n > alpha) and :func:`batch_quantile` warns.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from debiascl.errors import ConfigError


def quantile_rank(n: torch.Tensor, alpha: float) -> torch.Tensor:
    """k = ceil(alpha * n) clamped to [1, n]: the rank (from the top) of the (1-alpha)-quantile.

    A relative tolerance keeps k exact when alpha * n is an integer up to float rounding.
    """
    k = torch.ceil(n.double() * alpha - 1e-9).long()
    return torch.minimum(k.clamp_min(1), n.long().clamp_min(1))


def removal_count(n: torch.Tensor, alpha: float) -> torch.Tensor:
    """ceil(alpha * (n - 1)): negatives above the batch (1 - alpha)-quantile of n distinct values.

    A tolerance keeps the count exact when alpha * (n - 1) is an integer up to float rounding.
    """
    return torch.ceil(alpha * (n.double() - 1.0).clamp_min(0.0) - 1e-9).long().clamp_min(0)


def batch_quantile(
    sim: torch.Tensor,
    mask: torch.Tensor,
    alpha: float | torch.Tensor,
    counts: list[int] | None = None,
) -> torch.Tensor:
    """(R,) batch (1 - alpha)-quantile of each row's masked entries (the module's rule).

    Args:
        sim: (R, M) float similarities.
        mask: (R, M) bool, True for a row's negatives.
        alpha: target fraction in (0, 1), or an (R,) tensor of per-row fractions.
        counts: the rows' numbers of True mask entries when the caller already has them.

    Returns:
        (R,) in ``sim``'s dtype: linear interpolation between order statistics, equal to
        ``torch.quantile(row, 1 - alpha)`` of the masked entries up to rounding, and rounded down
        so that ``s > q`` removes exactly the entries the exact quantile removes. Rows without
        negatives give -inf.

    Warns (``UserWarning``) when alpha * n < 1 for some row with n >= 1 negatives.
    """
    if counts is None:
        n = count_true(mask)
        counts = n.tolist()  # one host sync: the warning, the partial sort's width, empty rows
    else:
        n = torch.tensor(counts, dtype=torch.int64).to(sim.device)
    _warn_unresolved(counts, alpha)
    host = not isinstance(alpha, torch.Tensor) and len(counts) <= _HOST_ROWS
    if host:  # a few rows (first visits): the same double arithmetic on the host, fewer ops
        lower_upper, w, kmax = _host_positions(counts, alpha, sim.device)
    else:
        d = alpha * (n.double() - 1.0).clamp_min(0.0)  # 0-based position from the top
        upper = torch.ceil(d - 1e-9).long()  # index (from the top) of the lower statistic
        lower = torch.floor(d + 1e-9).long().clamp(max=upper)
        kmax = int(upper.max()) + 1 if upper.numel() else 1
        lower_upper = torch.stack([lower, upper], dim=1)
        w = (upper.double() - d).clamp(0.0, 1.0)  # weight of the larger statistic
    top = sim.masked_fill(~mask, float("-inf")).topk(min(kmax, sim.shape[1]), dim=1).values
    # the larger (hi) and the smaller (lo) of the two order statistics, in one gather
    hi_lo = top.gather(1, lower_upper)
    if host and sim.device.type == "cpu":
        q = _interpolate_host(hi_lo, w)
    else:
        hi, lo = hi_lo.unbind(1)
        hi_d, lo_d = hi_lo.double().unbind(1)
        q = (lo_d + w * (hi_d - lo_d)).to(sim.dtype)
        q = torch.where(hi > lo, torch.minimum(q, torch.nextafter(hi, lo)), lo)
    if all(counts):
        return q
    return torch.where(n > 0, q, torch.full_like(q, float("-inf")))


#: Up to this many rows, :func:`batch_quantile` computes the order-statistic positions on the
#: host (a few Python float operations per row instead of about ten small tensor ops).
_HOST_ROWS = 64


def _host_positions(
    counts: list[int], alpha: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(lower_upper, w, kmax)`` of :func:`batch_quantile` from the host's row counts.

    The same IEEE double operations as the tensor path (d = alpha max(n - 1, 0), upper =
    ceil(d - 1e-9), lower = min(floor(d + 1e-9), upper), w = clip(upper - d, 0, 1)), so the
    same values: (R, 2) int64 ``[lower, upper]``, (R,) float64 ``w`` and the partial sort width.
    """
    pairs, weights, kmax = [], [], 1
    for c in counts:
        d = alpha * max(c - 1.0, 0.0)
        upper = math.ceil(d - 1e-9)
        pairs.append((min(math.floor(d + 1e-9), upper), upper))
        weights.append(min(max(upper - d, 0.0), 1.0))
        kmax = max(kmax, upper + 1)
    lower_upper = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2).to(device)
    return lower_upper, torch.tensor(weights, dtype=torch.float64).to(device), kmax


def _interpolate_host(hi_lo: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:func:`batch_quantile`'s interpolation for a few CPU rows, in numpy (a handful of
    microsecond ufuncs instead of a dozen tensor ops): the same IEEE operations in the same
    order, so the same values. ``hi_lo``: (R, 2) the larger and the smaller order statistic;
    ``w``: (R,) float64 weight of the larger."""
    pair = hi_lo.detach().numpy()
    hi, lo = pair[:, 0], pair[:, 1]
    hi_d, lo_d = hi.astype(np.float64), lo.astype(np.float64)
    with np.errstate(invalid="ignore"):  # -inf - -inf (rows without negatives), as torch does
        q = (lo_d + w.numpy() * (hi_d - lo_d)).astype(pair.dtype)
    q = np.where(hi > lo, np.minimum(q, np.nextafter(hi, lo)), lo)
    return torch.from_numpy(np.ascontiguousarray(q, dtype=pair.dtype))


def _warn_unresolved(counts: list[int], alpha: float | torch.Tensor) -> None:
    counts = [c for c in counts if c > 0]
    if not counts:
        return
    if isinstance(alpha, torch.Tensor):  # per-row fractions: warn about the smallest
        alpha = float(alpha.min()) if alpha.numel() else 1.0
    smallest = min(counts)
    if alpha * smallest < 1.0:
        warnings.warn(
            f"alpha={alpha} x {smallest} negatives per row = {alpha * smallest:.3g} < 1: the "
            f"batch cannot resolve this fraction; the batch (1 - alpha)-quantile removes "
            f"{max(1, math.ceil(alpha * (smallest - 1) - 1e-9)) if smallest > 1 else 0} of "
            f"{smallest} negatives per row instead; use a larger batch or a larger alpha",
            UserWarning,
            stacklevel=3,
        )


def kth_largest(sim: torch.Tensor, mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, the k_i-th largest of the entries where ``mask`` is True.

    Args:
        sim: (R, M) float similarities.
        mask: (R, M) bool, True for the entries to rank (at least k_i per row).
        k: (R,) int64 ranks in [1, M].

    Returns:
        (R,) the k_i-th largest masked value per row (partial sort of max(k) columns only).
    """
    kmax = int(k.max()) if k.numel() else 1
    top = sim.masked_fill(~mask, float("-inf")).topk(kmax, dim=1).values
    return top.gather(1, (k - 1).clamp_min(0)[:, None])[:, 0]


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """Per-row number of True entries of a 2-D bool tensor, as int64 (R,).

    Fast path: read 8 bools as one int64 word and sum the words; each of the 8 byte lanes then
    holds the count of one column residue (at most M / 8 < 256, so lanes never carry into each
    other), and the lanes are added as bytes. About 5x faster than ``mask.sum(1)`` on CPU, which
    first widens every bool to int64.
    """
    m = mask.shape[1]
    aligned = mask.is_contiguous() and mask.storage_offset() % 8 == 0 and m % 8 == 0
    if not aligned or mask.device.type != "cpu" or m == 0:
        return mask.sum(1, dtype=torch.int64)
    words = mask.view(torch.int64)  # (R, m / 8)
    # Wide rows: sum blocks of 255 words, so that no byte lane exceeds 255 before the lanes
    # are split (rows of >= 2048 columns would otherwise carry between lanes).
    w = words.shape[1]
    if w < 255:  # one block (the common case): no slicing
        lanes = words.sum(1, keepdim=True)
        return lanes.view(torch.uint8).view(lanes.shape[0], -1).sum(1, dtype=torch.int64)
    full = (w // 255) * 255
    parts = []
    if full:
        parts.append(words[:, :full].reshape(-1, full // 255, 255).sum(2))
    if full < w:
        parts.append(words[:, full:].sum(1, keepdim=True))
    lanes = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return lanes.view(torch.uint8).view(lanes.shape[0], -1).sum(1, dtype=torch.int64)


def above_rows(sim: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(R, M) bool ``sim > lam[:, None]``: each row's entries above its threshold.

    On the CPU the comparison writes a float 0/1 tensor and casts it to bool: two vectorised
    passes, several times faster than torch's comparison into bool there. The same mask (a NaN
    compares False either way).
    """
    if sim.device.type != "cpu":
        return sim > lam[:, None]
    return torch.gt(sim, lam[:, None], out=torch.empty_like(sim)).bool()


def at_or_below_rows(sim: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(R, M) bool ``sim <= lam[:, None]``: a threshold's keep-mask (see :func:`above_rows`)."""
    if sim.device.type != "cpu":
        return sim <= lam[:, None]
    return torch.le(sim, lam[:, None], out=torch.empty_like(sim)).bool()


def ones_outside_columns(ones: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(R,) per-row sum of the float 0/1 entries of ``ones`` (R, M) outside the (R, k) int64
    ``columns``: the row sum minus the sum of the gathered entries, in ``ones``' dtype.

    Exact integers while M < 2**24 in float32 (every partial sum is an integer below 2**24), so
    the count of a float comparison over a row's columns but a few (the SimCLR layout's self and
    positive, :func:`~debiascl.pairs.excluded_columns`) without building a bool mask.
    """
    return ones.sum(1).sub_(ones.gather(1, columns).sum(1))


def threshold_gradient(
    sim: torch.Tensor,
    mask: torch.Tensor,
    lam: torch.Tensor,
    alpha: float,
    mask_counts: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts behind the stochastic gradient of the lambda objective, per row.

    Args:
        sim: (R, M) float32 similarities (detached).
        mask: (R, M) bool negatives of each row.
        lam: (R,) threshold of each row.
        alpha: target fraction.
        mask_counts: ``count_true(mask)`` when the caller already has it.
        excluded: (R, k) int64 columns, when ``mask`` is known to be True at every other column
            (the SimCLR layout: self and positive); the mask is then not read.

    Returns:
        ``(above, total)``: (R,) float counts of negatives with s > lambda, and of negatives. The
        gradient of a (pooled) anchor is ``alpha - sum(above) / sum(total)``.
    """
    if excluded is not None and sim.device.type == "cpu" and sim.dtype == torch.float32:
        gt = torch.gt(sim, lam[:, None], out=torch.empty_like(sim))  # 0/1 floats
        above = ones_outside_columns(gt, excluded)
    else:
        above = count_true(above_rows(sim, lam) & mask).float()
    total = (count_true(mask) if mask_counts is None else mask_counts).float()
    return above, total


def adam_threshold_step(
    lam: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    step: torch.Tensor,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.98,
    eps: float = 1e-8,
    bias_correction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample Adam, then projection onto [-1, 1].

    Args:
        lam, m, v, grad: (G,) thresholds, first and second moments, gradients.
        step: (G,) 1-based count of this sample's updates (for the bias correction).
        bias_correction: divide the moments by ``1 - beta^step`` (Adam's rule for moments that
            start at zero). ``False`` for moments initialised as real estimates (GloFND's
            ``moment_init="binomial"``), which are not biased towards zero.

    Returns:
        ``(lam, m, v)`` after the step.
    """
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * grad * grad
    if bias_correction:
        step = step.float()
        m_hat = m / (1.0 - torch.pow(beta1, step))
        v_hat = v / (1.0 - torch.pow(beta2, step))
    else:
        m_hat, v_hat = m, v
    lam = (lam - lr * m_hat / (v_hat.sqrt() + eps)).clamp(-1.0, 1.0)
    return lam, m, v


def sgd_threshold_step(lam: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """Projected SGD, the paper's rule: clip(lambda - lr * grad, -1, 1)."""
    return (lam - lr * grad).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class ThresholdRule:
    """How learned thresholds move (GloFND and its single-threshold ablation).

    Args:
        optimizer: ``"adam"`` (:func:`adam_threshold_step`) or ``"sgd"``
            (:func:`sgd_threshold_step`, moments unchanged).
        init: ``"one"`` or ``"batch_quantile"`` (the first visit sets the threshold to its batch
            quantile and is not a step).
        lr, beta1, beta2, eps: the update's hyperparameters.

    Raises:
        ConfigError: an unknown optimizer or init, lr <= 0, a beta outside [0, 1) or eps <= 0.
    """

    optimizer: str = "adam"
    init: str = "one"
    lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"GloFND optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.init not in ("one", "batch_quantile"):
            raise ConfigError(f"GloFND init must be 'one' or 'batch_quantile', got {self.init!r}")
        lr, beta1, beta2, eps = self.lr, self.beta1, self.beta2, self.eps
        if lr <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or eps <= 0:
            raise ConfigError(
                f"GloFND needs lr > 0, 0 <= beta1, beta2 < 1 and eps > 0; got lr={lr}, "
                f"beta1={beta1}, beta2={beta2}, eps={eps}"
            )

    def step(
        self,
        lam: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        grad: torch.Tensor,
        visits: torch.Tensor,
        bias_correction: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lam, m, v)`` after one update of (G,) thresholds with gradients ``grad``.

        ``visits``: (G,) earlier visits of each threshold; Adam's bias correction counts the
        threshold's own steps, which with ``init="batch_quantile"`` exclude the initialising
        visit.
        """
        if self.optimizer == "sgd":
            return sgd_threshold_step(lam, grad, self.lr), m, v
        step = (visits if self.init == "batch_quantile" else visits + 1).clamp_min(1.0)
        return adam_threshold_step(
            lam, m, v, grad, step, self.lr, self.beta1, self.beta2, self.eps, bias_correction
        )


def check_alpha(alpha: float) -> float:
    """Validate the target fraction alpha in (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ConfigError(
            f"alpha must be in (0, 1) (the fraction of negatives to remove), got {alpha!r}"
        )
    if math.isnan(alpha):
        raise ConfigError("alpha must be in (0, 1), got nan")
    return float(alpha)
