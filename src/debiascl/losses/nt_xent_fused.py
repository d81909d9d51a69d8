"""One-process NT-Xent as a single autograd node with a hand-written backward.

Same loss as the general path of :func:`debiascl.losses.infonce.nt_xent` (Chen et al., ICML
2020), for the rows z of ``[z1; z2]`` scaled to unit norm (as :func:`~debiascl.numerics.unit_rows`
does, here inside the node), shape (n, D), n = 2B, and temperature t:

    loss = mean_i ( log sum_{j in D_i} exp(s_ij) - s_ip ),   s_ij = z_i . z_j / t,

where p = (i + B) mod n is the positive of anchor i and D_i holds p and the negatives j != i, p
that a keep-mask leaves in (all of them without one).

Unit rows bound every logit by 1 / t, so while 1 / t is at most ``_MAX_LOGIT`` (t >= 0.025 in
float32) the exponentials need no shift: E = exp(s) lies in [e^-40, e^40] and its row sums
neither overflow nor underflow. Below that temperature each row is shifted by its positive logit
and then by its largest kept term (two more passes over the n x n matrix), as a log-sum-exp does.

Work per call: the normalisation, one (n, D) x (D, n) product, an in-place exponential, a row sum
r; backward (then the normalisation's, on (n, D) rows)

    dL/dz = ( diag(1/r) E z + E^T diag(1/r) z - 2 z_p ) / (t n)

(P = diag(1/r) E is the softmax; the positive's column contributes ``P_ip - 1``, and the
positive map is its own inverse, so its two terms are both ``z_p``). Without a keep-mask and
shift E is symmetric, so both products are one (n, n) x (n, 2D) product ``E [z, z / r]``; with
one, two products (E and E^T). The n x n exponentials are the only n x n buffer kept from forward
to backward; autograd's version of the same loss keeps several (logits, mask, softmax, their
gradients) and runs twice the matrix products.
"""

from __future__ import annotations

import torch

from debiascl.errors import check
from debiascl.numerics import at_least_float32

# Largest 1 / t taken without shifting the exponentials: e^40 ~ 2e17 and e^-40 ~ 4e-18 sit far
# inside float32's normal range (1e-38 .. 3e38) even summed over 10^6 terms.
_MAX_LOGIT = {torch.float32: 40.0, torch.float64: 300.0}
_EPS = 1e-12  # F.normalize's floor on the norm


def _positive_rolled(z: torch.Tensor) -> torch.Tensor:
    """(n, D) rows of each anchor's positive: ``[z2; z1]`` for ``z = [z1; z2]``."""
    b = z.shape[0] // 2
    return torch.cat([z[b:], z[:b]])


def _set_positives(e: torch.Tensor, values: torch.Tensor | float) -> None:
    """Write ``values`` (n,) or a scalar at every anchor's positive column (the diagonals at
    offsets +-B: row i < B holds its positive at column i + B, row i >= B at column i - B)."""
    b = e.shape[0] // 2
    if isinstance(values, torch.Tensor):
        e.diagonal(b).copy_(values[:b])
        e.diagonal(-b).copy_(values[b:])
    else:
        e.diagonal(b).fill_(values)
        e.diagonal(-b).fill_(values)


def _exp_unshifted(z: torch.Tensor, pos: torch.Tensor, inv_t: float, keep) -> torch.Tensor:
    """(n, n) exp(s) with self and dropped negatives at 0 (|s| <= 1 / t is small enough)."""
    e = torch.mm(z * inv_t, z.T).exp_()
    if keep is not None:
        e.mul_(keep)
    e.diagonal().zero_()
    _set_positives(e, pos.exp())  # the same value at (i, p) and (p, i): E stays symmetric
    return e


def _exp_shifted(z: torch.Tensor, pos: torch.Tensor, inv_t: float, keep) -> tuple:
    """(n, n) exp(s - s_p - m) and the (n,) total shift s_p + m, m the row's largest kept term."""
    e = torch.addmm(pos[:, None], z, z.T, beta=-1.0, alpha=inv_t)  # s_ij - s_ip
    if keep is not None:
        e.masked_fill_(~keep, float("-inf"))
    e.diagonal().fill_(float("-inf"))
    _set_positives(e, 0.0)
    top = e.amax(dim=1, keepdim=True)  # >= 0: the positive's 0 is in every row
    return e.sub_(top).exp_(), pos + top[:, 0]


class _FusedNTXent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z1, z2, inv_t: float, keep: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        x = torch.cat([z1, z2])
        x = x.to(at_least_float32(x.dtype))
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(_EPS)
        z = x.div_(norm)  # unit_rows: a zero row stays zero
        zp = _positive_rolled(z)
        pos = (z * zp).sum(dim=1).mul_(inv_t)  # (n,) positive logits s_ip
        if inv_t <= _MAX_LOGIT.get(z.dtype, 0.0):
            e = _exp_unshifted(z, pos, inv_t, keep)
            row_sum = e.sum(dim=1)
            per_anchor = row_sum.log().sub_(pos)
        else:
            e, shift = _exp_shifted(z, pos, inv_t, keep)
            row_sum = e.sum(dim=1)
            per_anchor = row_sum.log().add_(shift).sub_(pos)
        ctx.symmetric = keep is None and inv_t <= _MAX_LOGIT.get(z.dtype, 0.0)
        ctx.save_for_backward(z, zp, e, row_sum, norm)
        ctx.inv_t, ctx.dtypes = inv_t, (z1.dtype, z2.dtype)
        return per_anchor.mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:  # type: ignore[override]
        # create_graph=True runs backward in grad mode: its result would be treated as constant
        check(
            not torch.is_grad_enabled(),
            "nt_xent's one-process kernel is differentiable once (backward with "
            "create_graph=True); use debiascl.losses.infonce.nt_xent_general for higher orders",
        )
        z, zp, e, row_sum, norm = ctx.saved_tensors
        with torch.autocast(device_type=z.device.type, enabled=False):
            inv_r = row_sum.reciprocal()[:, None]
            if ctx.symmetric:  # E = E^T: E z / r + E (z / r) in one product
                d = z.shape[1]
                both = e @ torch.cat([z, z * inv_r], dim=1)
                out = both[:, :d].mul(inv_r).add_(both[:, d:])
            else:
                out = (e @ z).mul_(inv_r)
                out.addmm_(e.T, z * inv_r)
            out.sub_(zp, alpha=2.0).mul_(grad * (ctx.inv_t / z.shape[0]))  # dL/dz
            # z = x / max(||x||, eps): dL/dx = (g - z (z . g)) / ||x||, or g / eps when clamped
            radial = (z * out).sum(dim=1, keepdim=True).mul_(norm > _EPS)
            dx = out.sub_(z * radial).div_(norm)
            b = z.shape[0] // 2
            return dx[:b].to(ctx.dtypes[0]), dx[b:].to(ctx.dtypes[1]), None, None


def fused_nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, keep: torch.Tensor | None
) -> torch.Tensor:
    """Mean NT-Xent over the 2B rows of ``[z1; z2]`` in one process, normalised here.

    Normalisation as :func:`debiascl.numerics.unit_rows` (float32 or better, a zero row stays
    zero), its backward as autograd's for ``F.normalize``.

    Args:
        z1, z2: (B, D) embeddings of the two views, same shape (checked by the caller).
        temperature: t > 0 (checked by the caller).
        keep: optional (2B, 2B) bool; False removes a negative (self and positive entries are
            ignored).

    Returns:
        Scalar loss (float32, or float64 for float64 inputs); differentiable once w.r.t. z1, z2.

    Raises:
        DebiasclError: in backward with ``create_graph=True`` (double backward).
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):
        return _FusedNTXent.apply(z1, z2, 1.0 / temperature, keep)
