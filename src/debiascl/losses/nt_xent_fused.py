"""One-process NT-Xent as a single autograd node with a hand-written backward.

Same loss as the general path of :func:`debiascl.losses.infonce.nt_xent` (Chen et al., ICML
2020), for unit rows ``z = [z1; z2]`` of shape (n, D), n = 2B, and temperature t:

    loss = mean_i log( sum_{j in D_i} exp(s_ij - s_ip) ),   s_ij = z_i . z_j / t,

where p = (i + B) mod n is the positive of anchor i and D_i holds p and the negatives j != i, p
that a keep-mask leaves in (all of them without one). Shifting each row by its positive logit
s_ip puts the positive's term at exactly 1, so the row sum is at least 1 and the loss of a row is
the log of its sum. The terms are at most exp(2 / t); where that could overflow (t below
``2 / _SAFE_SPAN``) the rows are also shifted by their largest kept term, at the cost of one more
pass over the n x n matrix.

Work per call: one (n, D) x (D, n) product written straight as ``s - s_p`` (``addmm``), an
in-place exponential, a row sum; backward two (n, n) x (n, D) products on the saved exponentials
with the 1 / row-sum folded into the (n, D) operands:

    dL/dz = ( diag(1/r) E z + E^T diag(1/r) z - 2 z_p ) / (t n),    E_ij = exp(s_ij - shift_i),

r the row sums (the positive's column contributes ``P_ip - 1``; the positive map is its own
inverse, so its two terms are both ``z_p``). One n x n buffer lives from forward to backward;
autograd's version of the same loss keeps several (logits, mask, softmax, their gradients).
"""

from __future__ import annotations

import torch

from debiascl.errors import check

# Largest spread 2 / t of shifted logits taken without a row maximum: exp(50) ~ 5e21, so a sum
# of 10^6 such terms stays far below float32's 3.4e38.
_SAFE_SPAN = {torch.float32: 50.0, torch.float64: 600.0}


def _positive_rolled(z: torch.Tensor) -> torch.Tensor:
    """(n, D) rows of each anchor's positive: ``[z2; z1]`` for ``z = [z1; z2]``."""
    b = z.shape[0] // 2
    return torch.cat([z[b:], z[:b]])


def _set_positives(e: torch.Tensor, value: float) -> None:
    """Write ``value`` at every anchor's positive column (the diagonals at offsets +-B)."""
    b = e.shape[0] // 2
    e.diagonal(b).fill_(value)
    e.diagonal(-b).fill_(value)


class _FusedNTXent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, inv_t: float, keep: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        zp = _positive_rolled(z)
        pos = (z * zp).sum(dim=1, keepdim=True).mul_(inv_t)
        e = torch.addmm(pos, z, z.T, beta=-1.0, alpha=inv_t)  # s_ij - s_ip
        if 2.0 * inv_t <= _SAFE_SPAN.get(z.dtype, 0.0):
            shift = None
            e.exp_()
            if keep is not None:
                e.mul_(keep)
            e.diagonal().zero_()
            _set_positives(e, 1.0)
        else:
            if keep is not None:
                e.masked_fill_(~keep, float("-inf"))
            e.diagonal().fill_(float("-inf"))
            _set_positives(e, 0.0)
            shift = e.amax(dim=1, keepdim=True)  # >= 0: the positive's 0 is in every row
            e.sub_(shift).exp_()
        row_sum = e.sum(dim=1)
        per_anchor = row_sum.log()
        if shift is not None:
            per_anchor += shift[:, 0]
        ctx.save_for_backward(z, zp, e, row_sum)
        ctx.inv_t = inv_t
        return per_anchor.mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        # create_graph=True runs backward in grad mode: its result would be treated as constant
        check(
            not torch.is_grad_enabled(),
            "nt_xent's one-process kernel is differentiable once (backward with "
            "create_graph=True); use debiascl.losses.infonce.nt_xent_general for higher orders",
        )
        z, zp, e, row_sum = ctx.saved_tensors
        with torch.autocast(device_type=z.device.type, enabled=False):
            inv_r = row_sum.reciprocal()[:, None]
            out = (e @ z).mul_(inv_r)
            out.addmm_(e.T, z * inv_r)
            out.sub_(zp, alpha=2.0)
            return out.mul_(grad * (ctx.inv_t / z.shape[0])), None, None


def fused_nt_xent(z: torch.Tensor, temperature: float, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean NT-Xent over the n = 2B rows of unit embeddings ``z = [z1; z2]`` in one process.

    Args:
        z: (2B, D) unit rows (float32 or float64), normally from ``unit_rows``.
        temperature: t > 0 (checked by the caller).
        keep: optional (2B, 2B) bool; False removes a negative (self and positive entries are
            ignored).

    Returns:
        Scalar loss; differentiable once w.r.t. ``z``.

    Raises:
        DebiasclError: in backward with ``create_graph=True`` (double backward).
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        return _FusedNTXent.apply(z, 1.0 / temperature, keep)
