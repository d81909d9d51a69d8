"""Pure DCL/HCL/SSD maths against naive float64 loops, identities, gradients and numerics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from debiascl.errors import DebiasclError
from debiascl.losses.debiased import debiased_info_nce
from debiascl.losses.infonce import masked_info_nce


def naive_debiased(pos, logits, mask, eta, beta, scale):
    """Direct transcription of DESIGN 3.4 with exponentials, one anchor at a time (float64)."""
    losses, clamped = [], []
    for i in range(logits.shape[0]):
        p = float(pos[i])
        negs = [float(logits[i, j]) for j in range(logits.shape[1]) if mask[i, j]]
        n = len(negs)
        e_i = float(eta[i]) if isinstance(eta, torch.Tensor) else eta
        weights = [math.exp(beta * x) for x in negs]
        total_w = sum(weights)
        s = n * sum(w / total_w * math.exp(x) for w, x in zip(weights, negs, strict=True))
        ng = (s - n * e_i * math.exp(p)) / (1 - e_i)
        floor = n * math.exp(-scale)
        clamped.append(ng < floor)
        ng = max(ng, floor)
        losses.append(-math.log(math.exp(p) / (math.exp(p) + ng)))
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(clamped)


def cosine_batch(a=6, m=9, d=5, seed=0, drop=0.2):
    """Cosine similarities of a anchors to m candidates, positive in column i, random negatives."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(a, d, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    y[:a] = F.normalize(x + 0.3 * y[:a], dim=1)  # positives are similar
    sim = x @ y.T
    mask = torch.rand(a, m, generator=g) > drop
    mask[torch.arange(a), torch.arange(a)] = False
    mask[:, a] |= True  # at least one negative per row
    return sim, mask


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("eta", [0.0, 0.05, 0.3])
def test_matches_naive_formula(eta, beta):
    sim, mask = cosine_batch()
    scale = 2.0
    logits = sim * scale
    pos = logits.diagonal()
    out = debiased_info_nce(pos, logits, mask, eta=eta, beta=beta, logit_scale=scale)
    ref, ref_clamped = naive_debiased(pos, logits, mask, eta, beta, scale)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(out.clamped, ref_clamped)
    assert torch.equal(out.num_negatives, mask.sum(1))


def test_per_anchor_eta_matches_naive():
    sim, mask = cosine_batch(seed=1)
    eta = torch.tensor([0.0, 0.02, 0.1, 0.2, 0.4, 0.05], dtype=torch.float64)
    logits = sim * 3.0
    out = debiased_info_nce(logits.diagonal(), logits, mask, eta=eta, beta=1.0, logit_scale=3.0)
    ref, ref_clamped = naive_debiased(logits.diagonal(), logits, mask, eta, 1.0, 3.0)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(out.clamped, ref_clamped)


def test_eta0_beta0_is_infonce():
    sim, mask = cosine_batch(a=8, m=16, seed=2)
    logits = sim * 14.0
    out = debiased_info_nce(logits.diagonal(), logits, mask, eta=0.0, beta=0.0, logit_scale=14.0)
    # masked_info_nce: at float64 precision when it keeps float64, else at float32 precision ...
    ref_lib = masked_info_nce(logits.diagonal(), logits, mask)
    tol = 1e-12 if ref_lib.dtype == torch.float64 else 1e-6
    torch.testing.assert_close(out.loss.to(ref_lib.dtype), ref_lib, rtol=tol, atol=tol)
    # ... and to a float64 InfoNCE loop at float64 precision.
    ref = torch.stack(
        [
            -logits[i, i] + torch.log(torch.exp(logits[i, i]) + torch.exp(logits[i][mask[i]]).sum())
            for i in range(8)
        ]
    )
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    assert not out.clamped.any()


def test_tiny_beta_hcl_equals_dcl():
    # beta = 0 takes the plain log-sum-exp path; a tiny beta exercises the weighted path.
    sim, mask = cosine_batch(seed=3)
    logits = sim * 2.0
    dcl = debiased_info_nce(logits.diagonal(), logits, mask, eta=0.1, beta=0.0, logit_scale=2.0)
    hcl = debiased_info_nce(logits.diagonal(), logits, mask, eta=0.1, beta=1e-9, logit_scale=2.0)
    torch.testing.assert_close(hcl.loss, dcl.loss, rtol=1e-8, atol=1e-10)


def test_constant_tensor_eta_equals_scalar():
    sim, mask = cosine_batch(seed=4)
    logits = sim * 5.0
    pos = logits.diagonal()
    scalar = debiased_info_nce(pos, logits, mask, eta=0.15, beta=0.7, logit_scale=5.0)
    vec = debiased_info_nce(
        pos,
        logits,
        mask,
        eta=torch.full((6,), 0.15, dtype=torch.float64),
        beta=0.7,
        logit_scale=5.0,
    )
    torch.testing.assert_close(vec.loss, scalar.loss, rtol=0, atol=0)


def test_per_anchor_eta_changes_only_its_anchor():
    sim, mask = cosine_batch(seed=5)
    logits = sim * 2.0
    eta = torch.full((6,), 0.1, dtype=torch.float64)
    base = debiased_info_nce(logits.diagonal(), logits, mask, eta=eta, logit_scale=2.0).loss
    eta2 = eta.clone()
    eta2[3] = 0.3
    moved = debiased_info_nce(logits.diagonal(), logits, mask, eta=eta2, logit_scale=2.0).loss
    changed = (moved != base).nonzero().flatten().tolist()
    assert changed == [3]


def test_clamp_behaviour():
    # Easy positives and a large eta: the corrected negative term goes below N e^{-1/t}.
    scale = 5.0
    sim = torch.tensor([[0.95, 0.1, -0.2, 0.0], [0.3, 0.2, 0.1, 0.25]], dtype=torch.float64)
    mask = torch.tensor([[False, True, True, True], [False, True, True, True]])
    logits = (sim * scale).requires_grad_(True)
    pos = logits[:, 0]
    out = debiased_info_nce(pos, logits, mask, eta=0.4, logit_scale=scale)
    assert out.clamped.tolist() == [True, False]
    # clamped loss = softplus(log N - 1/t - p)
    expected0 = F.softplus(torch.tensor(math.log(3) - scale - 0.95 * scale, dtype=torch.float64))
    torch.testing.assert_close(out.loss[0], expected0)
    out.loss.sum().backward()
    assert torch.all(logits.grad[0, 1:] == 0)  # clamped anchors give negatives no gradient
    assert logits.grad[0, 0] != 0  # but the positive still moves
    assert torch.all(logits.grad[1, 1:] != 0)


def test_clamp_bound_uses_logit_scale_gradient():
    sim, mask = cosine_batch(seed=6)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)

    def f(s):
        logits = sim * s
        return debiased_info_nce(logits.diagonal(), logits, mask, eta=0.3, logit_scale=s).loss

    assert torch.autograd.gradcheck(lambda s: f(s).sum(), (scale,))


def test_empty_rows_give_zero_loss_like_infonce():
    sim, mask = cosine_batch(seed=7)
    mask[2] = False
    logits = (sim * 2.0).requires_grad_(True)
    out = debiased_info_nce(logits.diagonal(), logits, mask, eta=0.1, logit_scale=2.0)
    assert out.loss[2] == 0 and not out.clamped[2] and out.num_negatives[2] == 0
    out.loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad[2] == 0)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gradcheck_float64(beta):
    sim, mask = cosine_batch(a=4, m=7, seed=8)
    eta = torch.tensor([0.0, 0.05, 0.1, 0.02], dtype=torch.float64)
    # Stay away from the clamp kink: check which anchors clamp and keep a margin.
    logits = sim * 2.0
    out = debiased_info_nce(logits.diagonal(), logits, mask, eta=eta, beta=beta, logit_scale=2.0)
    assert not out.clamped.any()
    x = sim.clone().requires_grad_(True)

    def fn(s):
        lg = s * 2.0
        return debiased_info_nce(lg.diagonal(), lg, mask, eta=eta, beta=beta, logit_scale=2.0).loss

    assert torch.autograd.gradcheck(fn, (x,))


def test_gradcheck_with_some_anchors_clamped():
    sim, mask = cosine_batch(a=4, m=7, seed=9)
    x = sim.clone().requires_grad_(True)
    eta = torch.tensor([0.0, 0.6, 0.05, 0.9], dtype=torch.float64)
    out = debiased_info_nce(sim.diagonal() * 3, sim * 3, mask, eta=eta, logit_scale=3.0)
    assert out.clamped.any() and not out.clamped.all()

    def fn(s):
        lg = s * 3.0
        return debiased_info_nce(lg.diagonal(), lg, mask, eta=eta, logit_scale=3.0).loss

    assert torch.autograd.gradcheck(fn, (x,))


def _embeddings(n=32, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    b = F.normalize(a + 0.05 * torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    return a, b


@pytest.mark.parametrize("scale", [14.0, 100.0])
@pytest.mark.parametrize("eta,beta", [(0.0, 0.0), (0.1, 0.0), (0.1, 1.0), (0.5, 2.0)])
def test_low_temperature_float32_finite_and_matches_float64(scale, eta, beta):
    a, b = _embeddings()
    a.requires_grad_(True)
    sim = a @ b.T
    mask = ~torch.eye(32, dtype=torch.bool)
    logits = sim * scale
    out = debiased_info_nce(logits.diagonal(), logits, mask, eta=eta, beta=beta, logit_scale=scale)
    assert out.loss.dtype == torch.float32
    out.loss.mean().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(a.grad).all()
    sim64 = a.detach().double() @ b.double().T
    ref = debiased_info_nce(
        sim64.diagonal() * scale, sim64 * scale, mask, eta=eta, beta=beta, logit_scale=scale
    )
    torch.testing.assert_close(out.loss.double(), ref.loss, rtol=1e-4, atol=1e-4)
    # e^{100} overflows float32: a naive exponential formula is not finite here.
    if scale == 100.0:
        assert not torch.isfinite(torch.exp(logits.detach())).all()


def test_bfloat16_autocast_cpu_finite():
    a, b = _embeddings(seed=1)
    a.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = a @ b.T
        assert sim.dtype == torch.bfloat16
        logits = sim * 14.0
        mask = ~torch.eye(32, dtype=torch.bool)
        out = debiased_info_nce(
            logits.diagonal(), logits, mask, eta=0.1, beta=1.0, logit_scale=14.0
        )
    assert out.loss.dtype == torch.float32
    out.loss.mean().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(a.grad).all()


def test_bad_inputs():
    sim, mask = cosine_batch()
    pos = sim.diagonal()
    with pytest.raises(DebiasclError, match=r"\[0, 1\)"):
        debiased_info_nce(pos, sim, mask, eta=1.0)
    with pytest.raises(DebiasclError, match=r"\[0, 1\)"):
        debiased_info_nce(pos, sim, mask, eta=-0.1)
    with pytest.raises(DebiasclError, match=r"\[0, 1\)"):
        debiased_info_nce(pos, sim, mask, eta=torch.tensor([0.1, 0.2, 0.3, 1.2, 0.0, 0.0]))
    with pytest.raises(DebiasclError, match=r"\[0, 1\)"):
        debiased_info_nce(pos, sim, mask, eta=float("nan"))
    with pytest.raises(DebiasclError, match=r"shape \(6,\)"):
        debiased_info_nce(pos, sim, mask, eta=torch.full((5,), 0.1))
    with pytest.raises(DebiasclError, match="beta"):
        debiased_info_nce(pos, sim, mask, beta=-1.0)
    with pytest.raises(DebiasclError, match="neg_mask"):
        debiased_info_nce(pos, sim, mask[:, :3])
