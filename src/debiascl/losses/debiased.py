"""Debiased contrastive losses (DCL, HCL, SSD) as pure functions, computed in log space.

For anchor i with positive logit p = s_i,i+ / t, negative logits n_j = s_ij / t (the N negatives
the mask keeps), false-negative rate eta and hardness beta:

    S  = N * sum_j w_j e^{n_j},        w_j = e^{beta n_j} / sum_k e^{beta n_k}
    Ng = max( (S - N eta e^{p}) / (1 - eta),  N e^{-1/t} )
    loss_i = -log( e^{p} / (e^{p} + Ng) ) = softplus(log Ng - p)

beta = 0 gives uniform weights, S = sum_j e^{n_j} (DCL); eta = 0 and beta = 0 give InfoNCE.
eta may be one number (DCL/HCL) or one value per anchor (SSD).

References: Chuang et al., NeurIPS 2020 (DCL, "Debiased Contrastive Learning"); Robinson et al.,
ICLR 2021 (HCL, "Contrastive Learning with Hard Negative Samples"); Wang et al., MLHC 2023
(SSD, "Sample-Specific Debiasing for Better Image-Text Models").

Numerics: every exponential stays inside a log-sum-exp, the subtraction S - N eta e^p is done as
log S + log(-expm1(log(N eta) + p - log S)), and everything runs in float32 or better with autocast
disabled, so logits of 1/t = 14 (or 100) never overflow, not even under fp16/bf16 autocast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from debiascl.errors import DebiasclError, check


class DebiasedTerms(NamedTuple):
    """Per-anchor output of :func:`debiased_info_nce`.

    Attributes:
        loss: (A,) per-anchor loss (in the graph).
        clamped: (A,) bool, True where the corrected negative term hit the lower clamp
            N e^{-1/t} (those anchors give their negatives no gradient).
        num_negatives: (A,) number N of negatives used per anchor.
    """

    loss: torch.Tensor
    clamped: torch.Tensor
    num_negatives: torch.Tensor


def _eta_error(value: float) -> DebiasclError:
    return DebiasclError(
        f"the false-negative rate eta must lie in [0, 1), got {value}; eta is the expected "
        f"fraction of an anchor's negatives that share its class"
    )


def check_eta(eta: float | torch.Tensor, num_anchors: int | None = None) -> None:
    """Raise unless ``eta`` is a number or tensor with values in [0, 1).

    With ``num_anchors`` a tensor must be 0-d or have shape (num_anchors,).
    """
    if isinstance(eta, torch.Tensor):
        if num_anchors is not None:
            check(
                eta.dim() == 0 or (eta.dim() == 1 and eta.shape[0] == num_anchors),
                f"per-anchor eta must have shape ({num_anchors},) (one value per anchor), got "
                f"{tuple(eta.shape)}",
            )
        bad = ~((eta >= 0) & (eta < 1))
        if bool(bad.any()):
            raise _eta_error(float(eta.reshape(-1)[bad.reshape(-1)][0]))
    elif not (0.0 <= float(eta) < 1.0):
        raise _eta_error(float(eta))


def debiased_info_nce(
    pos_logits: torch.Tensor,
    logits: torch.Tensor,
    neg_mask: torch.Tensor,
    eta: float | torch.Tensor = 0.0,
    beta: float = 0.0,
    logit_scale: float | torch.Tensor = 1.0,
    check_inputs: bool = True,
) -> DebiasedTerms:
    """Per-anchor debiased InfoNCE (DCL; HCL when ``beta > 0``; SSD with per-anchor ``eta``).

    Args:
        pos_logits: (A,) positive logits p (similarity * logit_scale).
        logits: (A, M) logits against all candidates.
        neg_mask: (A, M) bool, True for the negatives that enter the estimator. N is its row
            count (under DDP the candidates are gathered, so N is the global count).
        eta: false-negative rate tau+ in [0, 1): a number, a 0-d tensor or an (A,) tensor.
        beta: HCL hardness (>= 0); 0 means uniform weights (DCL).
        logit_scale: 1 / t, used for the lower clamp N e^{-1/t} (the smallest value
            sum_j e^{n_j} can take with cosine similarities). May be a tensor in the graph.
        check_inputs: validate shapes and eta (costs a device sync for tensor eta).

    Returns:
        :class:`DebiasedTerms` with (A,) loss, (A,) bool clamped, (A,) negatives count. Rows with
        no negative give loss 0 (as InfoNCE does) and no gradient.
    """
    num_anchors = logits.shape[0]
    if check_inputs:
        check(
            logits.dim() == 2 and neg_mask.shape == logits.shape and neg_mask.dtype == torch.bool,
            f"logits must be (A, M) with a bool neg_mask of the same shape, got logits "
            f"{tuple(logits.shape)} and neg_mask {neg_mask.dtype} {tuple(neg_mask.shape)}",
        )
        check(
            pos_logits.shape == (num_anchors,),
            f"pos_logits must have shape ({num_anchors},), got {tuple(pos_logits.shape)}",
        )
        check(beta >= 0, f"HCL hardness beta must be >= 0, got {beta}")
        check_eta(eta, num_anchors)

    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        from debiascl.negatives.thresholds import count_true  # (import cycle at module level)

        pos = pos_logits.to(dtype)
        count = count_true(neg_mask)  # bool row counts without widening to int64 (much faster)
        empty = count == 0
        # Rows without negatives get a harmless full mask so no -inf - -inf appears; their loss is
        # replaced by 0 at the end (torch.where then sends them no gradient).
        mask = neg_mask | empty[:, None]
        n_f = torch.where(empty, neg_mask.shape[1], count).to(dtype)
        log_n = torch.log(n_f)
        neg = logits.to(dtype).masked_fill(~mask, float("-inf"))

        # log S = log N + LSE((1 + beta) n) - LSE(beta n); for beta = 0 this is LSE(n) exactly.
        if beta == 0:
            log_s = torch.logsumexp(neg, dim=1)
        else:
            log_s = (
                log_n
                + torch.logsumexp((1.0 + beta) * neg, dim=1)
                - torch.logsumexp(beta * neg, dim=1)
            )

        eta_t = torch.as_tensor(eta, dtype=dtype, device=logits.device)
        eta_t = eta_t.expand(num_anchors)
        # r = log(N eta e^p / S); the numerator S - N eta e^p is positive iff r < 0.
        r = torch.log(eta_t) + log_n + pos - log_s
        positive = r < 0
        # Both where-branches are differentiated: keep the unused one finite, and keep r away from
        # 0 so d/dr log(-expm1(r)) ~ 1/r cannot overflow (values there are below float precision).
        r_safe = torch.where(positive, r.clamp(max=-1e-30), torch.full_like(r, -1.0))
        log_num = log_s + torch.log(-torch.expm1(r_safe))
        log_ng = log_num - torch.log1p(-eta_t)

        # The clamp also covers a non-positive numerator (r >= 0), where log_num is meaningless.
        scale = torch.as_tensor(logit_scale, device=logits.device).to(dtype)
        log_floor = log_n - scale
        clamped = ~positive | (log_ng < log_floor)
        log_ng = torch.where(clamped, log_floor, log_ng)

        loss = F.softplus(log_ng - pos)
        loss = torch.where(empty, torch.zeros_like(loss), loss)
    return DebiasedTerms(loss=loss, clamped=clamped & ~empty, num_negatives=count)


def dcl_loss(
    pos_logits: torch.Tensor,
    logits: torch.Tensor,
    neg_mask: torch.Tensor,
    eta: float | torch.Tensor,
    logit_scale: float | torch.Tensor,
) -> torch.Tensor:
    """(A,) DCL loss (Chuang et al., 2020): :func:`debiased_info_nce` with ``beta = 0``."""
    return debiased_info_nce(pos_logits, logits, neg_mask, eta, 0.0, logit_scale).loss


def hcl_loss(
    pos_logits: torch.Tensor,
    logits: torch.Tensor,
    neg_mask: torch.Tensor,
    eta: float | torch.Tensor,
    beta: float,
    logit_scale: float | torch.Tensor,
) -> torch.Tensor:
    """(A,) HCL loss (Robinson et al., 2021): :func:`debiased_info_nce` with hardness ``beta``."""
    return debiased_info_nce(pos_logits, logits, neg_mask, eta, beta, logit_scale).loss
