"""The fused SogCLR kernel (masked_exp + hand-written backward) against float64 autograd."""

from __future__ import annotations

import pytest
import torch

from debiascl.losses.global_contrastive import masked_exp, sogclr_surrogate_from_exp


def _reference(sim, scale, mask, log_u, pos_index, relative):
    """Plain float64 surrogate: (1/n) sum_j w_ij x_ij [- l_pos], w = e^{x - log u} detached."""
    logits = sim * scale
    pos = logits.gather(1, pos_index[:, None])[:, 0]
    x = logits - pos[:, None] if relative else logits
    w = torch.exp(x.detach() - log_u[:, None]) * mask
    value = (w * x).sum(1) / mask.sum(1)
    return value if relative else value - pos


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("scale_value", [5.0, 100.0])
def test_values_and_gradients_match_float64(relative: bool, scale_value: float) -> None:
    g = torch.Generator().manual_seed(1)
    a, m = 12, 20
    sim = torch.rand(a, m, generator=g) * 2 - 1
    pos_index = torch.randint(0, m, (a,), generator=g)
    mask = torch.rand(a, m, generator=g) > 0.3
    mask[torch.arange(a), pos_index] = False
    mask[:, 0] = mask[:, 0] | (mask.sum(1) == 0)
    # log u near the batch estimate, as in training (w of order 1)
    sim64 = sim.double().requires_grad_()
    scale64 = torch.tensor(scale_value, dtype=torch.float64, requires_grad=True)
    x64 = sim64.detach() * scale_value
    if relative:
        x64 = x64 - x64.gather(1, pos_index[:, None])
    log_u = torch.logsumexp(x64.masked_fill(~mask, float("-inf")), 1) - mask.sum(1).log()
    log_u = log_u + 0.3 * torch.randn(a, generator=g, dtype=torch.float64)
    want = _reference(sim64, scale64, mask, log_u, pos_index, relative)
    weights = torch.randn(a, generator=g, dtype=torch.float64)
    want_sim, want_scale = torch.autograd.grad((want * weights).sum(), (sim64, scale64))

    sim32 = sim.clone().requires_grad_()
    scale32 = torch.tensor(scale_value, requires_grad=True)
    e, shift, total = masked_exp(sim32, scale32, mask)
    assert torch.all(e[~mask] == 0)
    if relative:
        shift = shift - (sim.gather(1, pos_index[:, None])[:, 0] * scale_value)
    got = sogclr_surrogate_from_exp(
        sim32, scale32, e, total, shift, mask.sum(1), log_u.float(), pos_index, relative
    )
    got_sim, got_scale = torch.autograd.grad((got * weights.float()).sum(), (sim32, scale32))
    tol = {"rtol": 2e-4, "atol": 2e-4 * scale_value}
    torch.testing.assert_close(got.double(), want.detach(), **tol)
    torch.testing.assert_close(got_sim.double(), want_sim, **tol)
    torch.testing.assert_close(got_scale.double(), want_scale, rtol=2e-4, atol=1e-3)
    # removed negatives get exactly no gradient (positives do)
    removed = ~mask
    removed[torch.arange(a), pos_index] = False
    assert torch.all(got_sim[removed] == 0)


def test_log_mean_exp_survives_a_gap_larger_than_float32_exp_range() -> None:
    """Kept logits 150 below a removed one (scale 100): the shift uses the kept max only."""
    sim = torch.tensor([[1.0, -0.5, -0.6, -0.55]])
    mask = torch.tensor([[False, True, True, True]])
    _, shift, total = masked_exp(sim, torch.tensor(100.0), mask)
    got = shift + total.log() - torch.tensor(3.0).log()
    want = torch.logsumexp(sim[0, 1:].double() * 100, 0) - torch.tensor(3.0).double().log()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
