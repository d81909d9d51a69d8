"""Global contrastive loss (SogCLR) as pure functions, given the per-sample estimator u.

Yuan et al., "Provable stochastic optimization for global contrastive learning", ICML 2022
(SogCLR); bimodal form as in FastCLIP (Wei et al., 2024). The objective contrasts each anchor
with the whole dataset:

    F_i = -l_i,i+ + log( mean_{x != i} e^{l(i, x)} ),   l = s / t  (logits),

i.e. DESIGN 3.2's F divided by t, so the loss is on InfoNCE's scale and a learnable logit scale
receives the exact gradient of F (the surrogate is linear in the logits). The inner mean is tracked
per sample by a moving average u_i <- (1 - gamma) u_i + gamma g_i, where g_i is the mean of
e^{l_ij} over anchor i's *kept* batch negatives, and the surrogate

    L_i = -l_i,i+ + (1 / n_i) sum_{j kept} w_ij l_ij,    w_ij = e^{l_ij} / u_i  (detached),

has gradient -grad l_i,i+ + (1/n_i) sum_j w_ij grad l_ij: SogCLR's estimator of grad F_i.
Bimodal (image-text) uses logits relative to the positive, d_ij = l_ij - l_ii, for both u and the
surrogate (L_i = (1/n_i) sum_j w_ij d_ij with w_ij = e^{d_ij} / u_i).

Every u here is carried as **log u**: the moving average is exact in log space (log-add-exp) and
stays finite at any temperature (e^{l} overflows float32 beyond l = 88, e.g. logit scale 100).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def masked_log_mean_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log of the mean of e^{x_ij} over the entries of each row where ``mask`` is True.

    Args:
        x: (A, M) values (e.g. detached logits).
        mask: (A, M) bool; every row should have at least one True entry.

    Returns:
        (A,) log-mean-exp per row (-inf for a row without entries).
    """
    n = mask.sum(1).to(x.dtype)
    return torch.logsumexp(x.masked_fill(~mask, float("-inf")), dim=1) - torch.log(n)


#: Added to removed entries before the exponential: e^{x - 1e30} is exactly 0 in float32.
_REMOVED = 1e30
_EXP_FLOOR = -80.0


@torch.no_grad()
def masked_exp(
    sim: torch.Tensor, logit_scale: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted exponentials of the masked logits, in a few fused passes over (A, M).

    Args:
        sim: (A, M) similarities (any float dtype; read as float32, detached).
        logit_scale: scalar tensor 1 / t.
        mask: (A, M) bool, the entries to keep (at least one per row), or the same as float32
            0/1 values.

    Returns:
        ``(e, shift, total)``: e (A, M) float32 with e_ij = exp(l_ij - shift_i) on kept entries
        and exactly 0 elsewhere (l = logit_scale * sim; l_ij - shift_i is floored at -80, far
        below float32's resolution of the row sum), shift (A,) the row max of the kept
        logits (so every e_ij <= 1 and the row's largest is 1: no overflow or underflow of the
        row sum at any temperature), and total (A,) = sum_j e_ij.
    """
    # bool: a byte view converts much faster than .float()
    keep = mask if mask.dtype == torch.float32 else mask.view(torch.uint8).to(torch.float32)
    e = keep.sub(1.0).mul_(_REMOVED)  # 0 where kept, -1e30 where removed
    e.addcmul_(sim.detach().float(), logit_scale.detach().float())
    shift = e.amax(dim=1)
    # Clamping before exp keeps every input in exp's fast vectorised range (an underflowing
    # exp is several times slower on CPU); the kept entries it touches are < e^-80 of the row
    # max, and the removed ones are zeroed exactly by the mask.
    e.sub_(shift[:, None]).clamp_min_(_EXP_FLOOR).exp_().mul_(keep)
    return e, shift, e.sum(dim=1)


@torch.no_grad()
def exp_all_but_positive(
    sim: torch.Tensor, logit_scale: torch.Tensor, pos_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`masked_exp` for the mask that keeps every entry but each row's positive.

    The same ``(e, shift, total)`` bit for bit (a removed entry is -1e30 either way, and its
    exponential exactly 0), in fewer passes over (A, M): no mask is read. Rows need at least
    two columns.

    Args:
        sim: (A, M) similarities; logit_scale: scalar tensor 1 / t.
        pos_index: (A,) int64 column of each row's positive (the one removed entry), or (A, k)
            columns of each row's k removed entries (e.g. SimCLR's self and positive).
    """
    col = pos_index[:, None] if pos_index.dim() == 1 else pos_index
    e = sim.detach().float() * logit_scale.detach().float()
    e.scatter_(1, col, -_REMOVED)
    shift = e.amax(dim=1)
    e.sub_(shift[:, None]).clamp_min_(_EXP_FLOOR).exp_().scatter_(1, col, 0.0)
    return e, shift, e.sum(dim=1)


class _SogCLRSurrogate(torch.autograd.Function):
    """Surrogate rows c_i (sum_j e_ij x_ij) [- l_i,i+] with the gradient written directly.

    x_ij = l_ij (unimodal) or l_ij - l_i,i+ (relative); c_i = e^{shift_i - log u_i} / n_i, so
    c_i e_ij = w_ij / n_i. Backward is one scaled copy of e plus a scatter into the positive
    column, instead of autograd's chain over several (A, M) temporaries.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        sim: torch.Tensor,
        scale: torch.Tensor,
        e: torch.Tensor,
        total: torch.Tensor,
        coef: torch.Tensor,
        pos_index: torch.Tensor,
        relative: bool,
    ) -> torch.Tensor:
        simf = sim.detach().float()
        scalef = scale.detach().float()
        pos_sim = simf.gather(1, pos_index[:, None])[:, 0]
        dot = (e * simf).sum(dim=1)  # sum_j e_ij s_ij (faster than linalg.vecdot on CPU)
        per_scale = coef * (dot - pos_sim * total) if relative else coef * dot - pos_sim
        ctx.save_for_backward(e, total, coef, pos_index, scalef, per_scale)
        ctx.relative = relative
        ctx.sim_dtype = sim.dtype
        return per_scale * scalef

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        e, total, coef, pos_index, scalef, per_scale = ctx.saved_tensors
        grad_sim = grad_scale = None
        if ctx.needs_input_grad[0]:
            g = grad.float() * coef * scalef
            grad_sim = e * g[:, None]
            pos_grad = -(g * total) if ctx.relative else -(grad.float() * scalef)
            grad_sim.scatter_add_(1, pos_index[:, None], pos_grad[:, None])
            grad_sim = grad_sim.to(ctx.sim_dtype)
        if ctx.needs_input_grad[1]:
            grad_scale = (grad.float() * per_scale).sum()
        return grad_sim, grad_scale, None, None, None, None, None


def sogclr_surrogate_from_exp(
    sim: torch.Tensor,
    logit_scale: torch.Tensor,
    e: torch.Tensor,
    total: torch.Tensor,
    shift: torch.Tensor,
    count: torch.Tensor,
    log_u: torch.Tensor,
    pos_index: torch.Tensor,
    relative: bool = False,
) -> torch.Tensor:
    """:func:`sogclr_surrogate` from :func:`masked_exp`'s output (same values and gradients).

    Args:
        sim: (A, M) similarities in the graph; logit_scale: scalar tensor (may require grad).
        e, total: from ``masked_exp(sim, logit_scale, mask)``.
        shift: (A,) the shift of ``e`` in x's terms: masked_exp's shift, minus the positive
            logit when ``relative`` (e^{x_ij - shift_i} = e_ij).
        count: (A,) number n_i of kept entries per row.
        log_u: (A,) log u_i, estimating log mean_j e^{x_ij}.
        pos_index: (A,) column of each row's positive.
        relative: bimodal form (logits relative to the positive).

    Returns:
        (A,) surrogate values; their gradient w.r.t. ``sim`` and ``logit_scale`` is SogCLR's.
    """
    coef = torch.exp(shift.detach() - log_u.detach()) / count.to(torch.float32).clamp_min(1.0)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=sim.device)
    return _SogCLRSurrogate.apply(sim, scale, e, total, coef, pos_index, relative)


def moving_average_log_u(
    log_u: torch.Tensor,
    log_g: torch.Tensor,
    gamma: float | torch.Tensor,
    first_visit: torch.Tensor,
) -> torch.Tensor:
    """SogCLR's u update in log space: log((1 - gamma) u + gamma g), gamma = 1 on a first visit.

    Args:
        log_u: (A,) stored log u (ignored where ``first_visit``).
        log_g: (A,) log of the batch estimate g.
        gamma: moving-average rate in (0, 1].
        first_visit: (A,) bool, True for samples never seen before (their u is g).

    Returns:
        (A,) updated log u.
    """
    gamma = float(gamma)
    if gamma >= 1.0:
        return log_g.clone()
    mixed = torch.logaddexp(log_u + math.log1p(-gamma), log_g + math.log(gamma))
    return torch.where(first_visit, log_g, mixed)


def sogclr_surrogate(
    logits: torch.Tensor,
    pos_logits: torch.Tensor,
    mask: torch.Tensor,
    log_u: torch.Tensor,
    relative: bool = False,
) -> torch.Tensor:
    """Per-anchor SogCLR surrogate whose gradient is the estimator of grad F.

    Args:
        logits: (A, M) logits l_ij = s_ij / t (in the graph).
        pos_logits: (A,) positive logits (in the graph).
        mask: (A, M) bool, the kept negatives (n_i = row count, at least 1).
        log_u: (A,) log u_i of the row (detached), estimating log mean_x e^{l(i,x)} (or of
            e^{l(i,x) - l_ii} when ``relative``).
        relative: bimodal form with logits relative to the positive.

    Returns:
        (A,) surrogate values (only their gradient is meaningful).
    """
    d = logits - pos_logits[:, None] if relative else logits
    w = torch.exp(d.detach() - log_u.detach()[:, None])
    w = torch.where(mask, w, torch.zeros_like(w))
    n = mask.sum(1).clamp_min(1).to(logits.dtype)
    neg_term = (w * d).sum(1) / n
    return neg_term if relative else neg_term - pos_logits


def sogclr_objective(
    pos_logits: torch.Tensor, log_u: torch.Tensor, relative: bool = False
) -> torch.Tensor:
    """Per-anchor global objective estimated with u: F_i = -l_i,i+ + log u_i (or log u_i).

    With ``relative`` u already tracks e^{l_ij - l_ii}, so log u_i is the whole objective.
    """
    if relative:
        return log_u.detach()
    return (log_u - pos_logits).detach()


def cosine_gamma(gamma_max: float, gamma_min: float, progress: float) -> float:
    """Cosine schedule from ``gamma_max`` at progress 0 down to ``gamma_min`` at progress 1."""
    p = min(max(float(progress), 0.0), 1.0)
    return gamma_min + (gamma_max - gamma_min) * 0.5 * (1.0 + math.cos(math.pi * p))
