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
