"""The one-process NT-Xent kernel (hand-written backward) against plain float64 references.

* value and gradients w.r.t. z1 and z2 against a float64 per-anchor formula differentiated by
  autograd, with and without a keep-mask, several B and temperatures, both exponent paths
  (unshifted, and shifted by the positive and the row maximum at small t);
* float64 gradcheck (finite differences) of the kernel, both paths;
* the general path (``simclr_pairs`` + ``masked_info_nce`` + autograd), which DDP still uses:
  same value and gradients in float64, float32 and half precision, with a zero row and a row
  under the normalisation's norm floor;
* double backward is refused; autocast does not lower its precision;
* two gloo processes (general path, gathered candidates) against the kernel on the global batch.
"""

from __future__ import annotations

import pytest
import torch

from debiascl.errors import DebiasclError
from debiascl.losses import nt_xent_fused
from debiascl.losses.infonce import nt_xent, nt_xent_general
from distributed_helpers import run_distributed


def reference(z1: torch.Tensor, z2: torch.Tensor, t: float, keep=None) -> torch.Tensor:
    """Float64 NT-Xent written anchor by anchor: mean_i -log(e^{s_ip} / sum_{j in D_i} e^{s_ij}),
    D_i = the positive plus the negatives j != i, p that ``keep[i, j]`` leaves in."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n, b = z.shape[0], z.shape[0] // 2
    losses = []
    for i in range(n):
        p = (i + b) % n
        cols = [j for j in range(n) if j != i and (j == p or keep is None or bool(keep[i, j]))]
        logits = torch.stack([z[i] @ z[j] / t for j in cols])
        losses.append(torch.logsumexp(logits, dim=0) - z[i] @ z[p] / t)
    return torch.stack(losses).mean()


def value_and_grads(fn, z1: torch.Tensor, z2: torch.Tensor, *args, **kwargs):
    a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = fn(a, c, *args, **kwargs)
    ga, gc = torch.autograd.grad(loss, (a, c))
    return loss.detach(), ga, gc


def _inputs(b: int, d: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=dtype)
    z2 = z1 + 0.7 * torch.randn(b, d, generator=g, dtype=dtype)  # correlated views
    keep = torch.rand(2 * b, 2 * b, generator=g) > 0.3
    return z1, z2, keep


@pytest.fixture(params=["unshifted", "row_max_shift"])
def shift_path(request, monkeypatch):
    """Run a test through each of the kernel's two exponent paths at the same temperatures."""
    if request.param == "row_max_shift":
        monkeypatch.setattr(nt_xent_fused, "_MAX_LOGIT", {})
    return request.param


@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("t", [0.07, 0.5])
@pytest.mark.parametrize("masked", [False, True])
def test_value_and_gradients_match_float64_reference(b, t, masked, shift_path) -> None:
    z1, z2, keep = _inputs(b, 5, seed=b)
    keep = keep if masked else None
    got = value_and_grads(nt_xent, z1, z2, t, keep_mask=keep)
    want = value_and_grads(reference, z1, z2, t, keep)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_small_temperature_takes_the_row_maximum_and_stays_exact() -> None:
    # z2 = -z1: every positive logit is -1/t, the lowest possible; at t = 0.01 the negatives sit
    # up to 200 above it, past float32's exp range, so the kernel must shift by the row maximum.
    z1, _, keep = _inputs(6, 4, seed=7)
    z2 = -z1.clone()
    z2[0] = z1[1]  # one ordinary row too
    for t in (0.01, 0.024, 0.026, 0.2):
        for mask in (None, keep):
            want = value_and_grads(reference, z1, z2, t, mask)
            got = value_and_grads(nt_xent, z1.float(), z2.float(), t, keep_mask=mask)
            assert all(torch.isfinite(x).all() for x in got)
            for x, y in zip(got, want, strict=True):
                torch.testing.assert_close(
                    x.double(), y, rtol=2e-5, atol=2e-5 * float(y.abs().max())
                )


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_float64(masked, shift_path) -> None:
    z1, z2, keep = _inputs(4, 3, seed=11)
    keep = keep if masked else None
    a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: nt_xent(x, y, 0.3, keep_mask=keep), (a, c))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [0.02, 0.1, 1.0])
def test_equals_the_general_path(dtype, t) -> None:
    z1, z2, keep = _inputs(33, 16, seed=3, dtype=dtype)
    z1[5] = 0.0  # a zero row: cosine 0 with everything, same gradient through unit_rows
    z2[6] *= 1e-15  # a norm under F.normalize's floor 1e-12: divided by the floor instead
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}
    for mask in (None, keep):
        got = value_and_grads(nt_xent, z1, z2, t, keep_mask=mask)
        want = value_and_grads(nt_xent_general, z1, z2, t, keep_mask=mask)
        assert got[0].dtype == dtype
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_loss_and_half_gradients(dtype) -> None:
    z1, z2, keep = _inputs(12, 8, seed=4, dtype=dtype)
    for mask in (None, keep):
        got = value_and_grads(nt_xent, z1, z2, 0.1, keep_mask=mask)
        want = value_and_grads(nt_xent_general, z1, z2, 0.1, keep_mask=mask)
        assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == dtype
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y)  # default tolerances of x's dtype


def test_mask_entries_at_self_and_positive_are_ignored() -> None:
    z1, z2, keep = _inputs(5, 4, seed=5)
    n, b = 10, 5
    rows = torch.arange(n)
    drop_fixed = keep.clone()
    drop_fixed[rows, rows] = False
    drop_fixed[rows, (rows + b) % n] = False
    keep_fixed = keep.clone()
    keep_fixed[rows, rows] = True
    keep_fixed[rows, (rows + b) % n] = True
    a = value_and_grads(nt_xent, z1, z2, 0.2, keep_mask=drop_fixed)
    c = value_and_grads(nt_xent, z1, z2, 0.2, keep_mask=keep_fixed)
    for x, y in zip(a, c, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # and the mask does matter elsewhere
    assert abs(float(a[0]) - float(nt_xent(z1, z2, 0.2))) > 1e-3


def test_double_backward_is_refused() -> None:
    z1, z2, _ = _inputs(3, 4, seed=1)
    a = z1.clone().requires_grad_()
    with pytest.raises(DebiasclError, match="differentiable once.*nt_xent_general"):
        torch.autograd.grad(nt_xent(a, z2, 0.2), a, create_graph=True)
    # the general path is twice differentiable
    (grad,) = torch.autograd.grad(nt_xent_general(a, z2, 0.2), a, create_graph=True)
    grad.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_autocast_does_not_lower_precision() -> None:
    z1, z2, _ = _inputs(16, 8, seed=2, dtype=torch.float32)
    plain = value_and_grads(nt_xent, z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = value_and_grads(nt_xent, z1, z2, 0.1)
    assert cast[0].dtype == torch.float32
    for x, y in zip(cast, plain, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


GLOBAL_B, DIM = 6, 5


def _global_inputs():
    z1, z2, keep = _inputs(GLOBAL_B, DIM, seed=21)
    return z1, z2, keep


def _local_keep(keep: torch.Tensor, rank: int, b: int) -> torch.Tensor:
    """Rows of the global (2B, 2B) keep-mask for this rank's anchors [z1_local; z2_local]."""
    big_b = keep.shape[0] // 2
    return torch.cat(
        [keep[rank * b : (rank + 1) * b], keep[big_b + rank * b : big_b + (rank + 1) * b]]
    )


def _ddp_worker(rank: int, world_size: int) -> dict:
    z1, z2, keep = _global_inputs()
    b = GLOBAL_B // world_size
    local = slice(rank * b, (rank + 1) * b)
    out = {}
    for name, mask in (("plain", None), ("masked", _local_keep(keep, rank, b))):
        out[name] = value_and_grads(nt_xent, z1[local], z2[local], 0.2, keep_mask=mask)
    return out


@pytest.mark.distributed
def test_two_processes_match_the_kernel_on_the_global_batch(tmp_path) -> None:
    world = 2
    results = run_distributed(_ddp_worker, world_size=world, tmp_path=tmp_path)
    z1, z2, keep = _global_inputs()
    b = GLOBAL_B // world
    for name, mask in (("plain", None), ("masked", keep)):
        loss, g1, g2 = value_and_grads(nt_xent, z1, z2, 0.2, keep_mask=mask)
        # each rank's loss is the mean over its anchors: their mean is the global loss
        mean = sum(r[name][0] for r in results) / world
        torch.testing.assert_close(mean, loss, rtol=1e-12, atol=1e-12)
        for rank, res in enumerate(results):
            _, l1, l2 = res[name]
            local = slice(rank * b, (rank + 1) * b)
            # local rows receive world x the gradient of the global mean (objectives/objective.py)
            torch.testing.assert_close(l1, world * g1[local], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(l2, world * g2[local], rtol=1e-10, atol=1e-12)
