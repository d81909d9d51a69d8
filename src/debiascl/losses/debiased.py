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

from typing import Any, NamedTuple

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

        loss, clamped = _debiased_tail(log_s, pos, log_n, empty, eta, logit_scale)
    return DebiasedTerms(loss=loss, clamped=clamped & ~empty, num_negatives=count)


def _debiased_tail(
    log_s: torch.Tensor,
    pos: torch.Tensor,
    log_n: torch.Tensor,
    empty: torch.Tensor,
    eta: float | torch.Tensor,
    logit_scale: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A,) loss and clamped flags from log S, the positive logit and log N (all (A,))."""
    dtype, device = log_s.dtype, log_s.device
    eta_t = torch.as_tensor(eta, dtype=dtype, device=device).expand(log_s.shape[0])
    # r = log(N eta e^p / S); the numerator S - N eta e^p is positive iff r < 0.
    r = torch.log(eta_t) + log_n + pos - log_s
    positive = r < 0
    # Both where-branches are differentiated: keep the unused one finite, and keep r away from
    # 0 so d/dr log(-expm1(r)) ~ 1/r cannot overflow (values there are below float precision).
    r_safe = torch.where(positive, r.clamp(max=-1e-30), torch.full_like(r, -1.0))
    log_num = log_s + torch.log(-torch.expm1(r_safe))
    log_ng = log_num - torch.log1p(-eta_t)

    # The clamp also covers a non-positive numerator (r >= 0), where log_num is meaningless.
    scale = torch.as_tensor(logit_scale, device=device).to(dtype)
    log_floor = log_n - scale
    clamped = ~positive | (log_ng < log_floor)
    log_ng = torch.where(clamped, log_floor, log_ng)

    loss = F.softplus(log_ng - pos)
    loss = torch.where(empty, torch.zeros_like(loss), loss)
    return loss, clamped


#: Added to removed entries (as -1e30) so they fall below every kept logit without -inf.
_REMOVED = 1e30
#: Floor of x - rowmax before exp: inside exp's fast vectorised range (an argument whose exp
#: underflows, -inf included, is several times slower on CPU); e^-80 is far below float32's
#: resolution of a row sum, which is at least 1.
_EXP_FLOOR = -80.0


def _shifted_exp(
    x: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(e, total, lse)`` for rows of ``x`` whose removed entries (``keep`` 0) are near -1e30:
    e = exp(x - rowmax) times ``keep`` (so exactly 0 on removed entries), its row sums and the
    row log-sum-exp. Overwrites ``x``. The same values bit for bit as ``torch.logsumexp`` of x
    with -inf on the removed entries whenever no kept entry lies more than 80 below its row's
    maximum (logit scale < 40 with cosine similarities); beyond, entries under e^-80 count as
    e^-80, a change far below float32's resolution of the sum."""
    top = x.amax(dim=1)
    e = x.sub_(top[:, None]).clamp_min_(_EXP_FLOOR).exp_().mul_(keep)
    total = e.sum(dim=1)
    return e, total, total.log().add_(top)


class _LogNegSum(torch.autograd.Function):
    """log S (DCL/HCL) and the positive logit per row, from similarities, in a few passes.

    Forward gives :func:`debiased_info_nce`'s ``log_s`` and positive logit (see
    :func:`_shifted_exp` for when bit for bit); the
    backward is one scaled copy of the saved exponentials per log-sum-exp plus a scatter into the
    positive column, instead of autograd's re-exponentiation and its zero-filled gather gradient
    (the same gradient up to rounding). Masks enter as arithmetic on a float copy: boolean
    ``where``/``masked_fill`` with broadcasting are several times slower on CPU.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        sim: torch.Tensor,
        scale: torch.Tensor,
        keep: torch.Tensor,
        pos_index: torch.Tensor,
        log_n: torch.Tensor,
        beta: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = log_n.dtype
        simd = sim.detach().to(dtype)
        scaled = scale.detach().to(dtype)
        pos = simd.gather(1, pos_index[:, None])[:, 0] * scaled
        # neg = l on kept entries (l + 0 exactly), about -1e30 on removed ones
        neg = keep.sub(1.0).mul_(_REMOVED).addcmul_(simd, scaled)
        if beta == 0:
            e, total, log_s = _shifted_exp(neg, keep)
            e_hard = total_hard = None
        else:
            # log S = log N + LSE((1 + beta) n) - LSE(beta n)
            e, total, lse_1b = _shifted_exp((1.0 + beta) * neg, keep)
            e_hard, total_hard, lse_b = _shifted_exp(neg.mul_(beta), keep)
            log_s = log_n + lse_1b - lse_b
        ctx.save_for_backward(e, total, e_hard, total_hard, pos_index, simd, scale)
        ctx.beta = beta
        ctx.sim_dtype = sim.dtype
        return log_s, pos

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_log_s: torch.Tensor, grad_pos: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        e, total, e_hard, total_hard, pos_index, simd, scale = ctx.saved_tensors
        beta = ctx.beta
        g = grad_log_s.to(e.dtype)
        gp = grad_pos.to(e.dtype)
        # d log S / d l_ij: e_ij / sum(e) (DCL); (1 + b) e_ij / sum(e) - b eh_ij / sum(eh) (HCL)
        coef = g / total if e_hard is None else g * (1.0 + beta) / total
        coef_hard = None if e_hard is None else g * beta / total_hard
        grad_sim = grad_scale = None
        if ctx.needs_input_grad[0]:  # d l / d sim = scale, folded into the row coefficients
            s = scale.to(e.dtype)
            grad_sim = e * (coef * s)[:, None]
            if e_hard is not None:
                grad_sim.addcmul_(e_hard, (coef_hard * s)[:, None], value=-1.0)
            grad_sim.scatter_add_(1, pos_index[:, None], (gp * s)[:, None])
            grad_sim = grad_sim.to(ctx.sim_dtype)
        if ctx.needs_input_grad[1]:  # d l / d scale = sim
            row = coef * (e * simd).sum(dim=1)
            if e_hard is not None:
                row = row - coef_hard * (e_hard * simd).sum(dim=1)
            row = row + gp * simd.gather(1, pos_index[:, None])[:, 0]
            grad_scale = row.sum().to(scale.dtype).reshape(scale.shape)
        return grad_sim, grad_scale, None, None, None, None


def debiased_info_nce_from_sim(
    sim: torch.Tensor,
    logit_scale: torch.Tensor,
    pos_index: torch.Tensor,
    neg_mask: torch.Tensor,
    eta: float | torch.Tensor = 0.0,
    beta: float = 0.0,
) -> DebiasedTerms:
    """:func:`debiased_info_nce` on the logits ``logit_scale * sim`` with positives at
    ``pos_index``, in fewer passes: the same values (bit for bit while no kept logit lies more
    than 80 below its row's largest, e.g. logit scale < 40) and gradients (up to rounding).

    Args:
        sim: (A, M) similarities (in the graph; any float dtype, computed in float32 or better).
        logit_scale: scalar tensor 1 / t (may require grad).
        pos_index: (A,) int64 column of each row's positive.
        neg_mask: (A, M) bool, the negatives that enter the estimator.
        eta, beta: as for :func:`debiased_info_nce` (not checked here).

    Returns:
        :class:`DebiasedTerms` as :func:`debiased_info_nce`.
    """
    dtype = torch.promote_types(sim.dtype, torch.float32)
    with torch.autocast(device_type=sim.device.type, enabled=False):
        keep = neg_mask.view(torch.uint8).to(dtype)  # byte view: much faster than .to(float)
        n_f = keep.sum(dim=1)  # exact counts
        count = n_f.long()
        empty = n_f == 0
        # Rows without negatives keep every entry (their keep row is all 0, so adding 1 makes
        # it all 1), so no -inf - -inf appears; their loss is replaced by 0 (torch.where then
        # sends them no gradient).
        if keep.device.type != "cpu" or bool(empty.any()):  # (no host sync on accelerators)
            keep = keep.add_(empty.to(dtype)[:, None])
        n_f = torch.where(empty, float(neg_mask.shape[1]), n_f)
        log_n = torch.log(n_f)
        scale = torch.as_tensor(logit_scale, device=sim.device)
        log_s, pos = _LogNegSum.apply(sim, scale, keep, pos_index, log_n, float(beta))
        loss, clamped = _debiased_tail(log_s, pos, log_n, empty, eta, scale)
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
