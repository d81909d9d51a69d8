"""The fused forms behind the fast loss kernels against the plain forms and float64 references.

* ``debiased_info_nce_from_sim`` (DCL/HCL with a hand-written backward) against a float64 loop
  of the papers' formulas, against ``debiased_info_nce`` (same loss bit for bit in float32) and
  by gradcheck;
* the one-process CLIP layout (text -> image similarities as the transpose of image -> text)
  against the two separate products, values and float64 gradients;
* ids checked once by the objective: tables skip their own check only when the objective's id
  range fits them;
* removal statistics without a detector equal the statistics from scanning the all-True mask.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from debiascl.errors import DataError
from debiascl.losses.debiased import debiased_info_nce, debiased_info_nce_from_sim
from debiascl.negatives.diagnostics import DetectionStats
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.pairs import clip_pairs, simclr_pairs


def loop_reference(sim, pos_index, mask, eta, beta, scale):
    """DCL/HCL per anchor with explicit exponentials (float64 Python floats)."""
    out = []
    for i in range(sim.shape[0]):
        p = scale * float(sim[i, pos_index[i]])
        negs = [scale * float(sim[i, j]) for j in range(sim.shape[1]) if mask[i, j]]
        n = len(negs)
        e_i = float(eta[i]) if isinstance(eta, torch.Tensor) else eta
        w = [math.exp(beta * x) for x in negs]
        s = n * sum(wj / sum(w) * math.exp(x) for wj, x in zip(w, negs, strict=True))
        ng = max((s - n * e_i * math.exp(p)) / (1 - e_i), n * math.exp(-scale))
        out.append(-math.log(math.exp(p) / (math.exp(p) + ng)))
    return torch.tensor(out, dtype=torch.float64)


def simclr_batch(b=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=dtype)
    z2 = z1 + 0.4 * torch.randn(b, d, generator=g, dtype=dtype)
    return simclr_pairs(z1, z2, torch.arange(b))


@pytest.mark.parametrize("beta", [0.0, 0.8])
def test_debiased_from_sim_matches_float64_loop_and_gradcheck(beta):
    batch = simclr_batch()
    mask = batch.neg_mask.clone()
    mask[1, 3] = False  # a removed negative
    eta = torch.tensor([0.0, 0.05, 0.1, 0.3, 0.02, 0.6] * 2, dtype=torch.float64)
    scale = 3.0
    out = debiased_info_nce_from_sim(
        batch.sim, torch.tensor(scale, dtype=torch.float64), batch.pos_index, mask, eta, beta
    )
    ref = loop_reference(batch.sim.detach(), batch.pos_index, mask, eta, beta, scale)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    assert bool(out.clamped.any()) and not bool(out.clamped.all())  # both branches exercised

    sim = batch.sim.detach().clone().requires_grad_()
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)

    def fn(x, c):
        return debiased_info_nce_from_sim(x, c, batch.pos_index, mask, eta, beta).loss

    assert torch.autograd.gradcheck(fn, (sim, s))


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_debiased_from_sim_equals_the_plain_form_in_float32(beta):
    batch = simclr_batch(b=32, d=16, seed=1, dtype=torch.float32)
    mask = batch.neg_mask.clone()
    mask[4] = False  # a row without negatives: loss 0, no gradient
    sim_a = batch.sim.detach().clone().requires_grad_()
    sim_b = batch.sim.detach().clone().requires_grad_()
    scale = torch.tensor(5.0)
    logits = sim_a * scale
    plain = debiased_info_nce(
        logits.gather(1, batch.pos_index[:, None])[:, 0], logits, mask, 0.1, beta, scale
    )
    fused = debiased_info_nce_from_sim(sim_b, scale, batch.pos_index, mask, 0.1, beta)
    assert torch.equal(plain.loss, fused.loss)  # same forward operations, bit for bit
    assert torch.equal(plain.clamped, fused.clamped)
    assert fused.loss[4] == 0
    w = torch.randn(plain.loss.shape, generator=torch.Generator().manual_seed(0))
    (plain.loss * w).sum().backward()
    (fused.loss * w).sum().backward()
    torch.testing.assert_close(sim_b.grad, sim_a.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(sim_b.grad[4] == 0)


def test_clip_pairs_one_process_transpose_matches_two_products():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    i2t, t2i = clip_pairs(img, txt, torch.arange(7))
    ni, nt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    torch.testing.assert_close(i2t.sim, ni @ nt.T, rtol=0, atol=1e-15)
    torch.testing.assert_close(t2i.sim, nt @ ni.T, rtol=0, atol=1e-15)
    assert t2i.sim.is_contiguous()
    w1 = torch.randn(7, 7, generator=g, dtype=torch.float64)
    w2 = torch.randn(7, 7, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((i2t.sim * w1).sum() + (t2i.sim * w2).sum(), (img, txt))
    ref = torch.autograd.grad(((ni @ nt.T) * w1).sum() + ((nt @ ni.T) * w2).sum(), (img, txt))
    for got, want in zip(grads, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_objective_checks_ids_once_and_tables_check_what_it_did_not_cover():
    z1, z2 = torch.randn(4, 6), torch.randn(4, 6)
    # the objective's id space fits the table: its own check covers the table
    fits = ContrastiveObjective("image_image", GlobalContrastiveLoss(8), num_samples=8)
    for ids, message in ((torch.tensor([0, 1, 2, 8]), "outside"), ([0, 1, 1, 2], "duplicate")):
        with pytest.raises(DataError, match=message):
            fits(z1, z2, torch.as_tensor(ids), logit_scale=5.0, ctx=StepContext())
    fits(z1, z2, torch.tensor([0, 1, 7, 3]), logit_scale=5.0, ctx=StepContext())
    table = fits.loss_fn.table("image")
    assert table.data[7, 1] == 1 and table.data[4, 1] == 0  # visits written for the batch's ids
    # the objective allows ids the table has no row for: the table still checks them
    wider = ContrastiveObjective("image_image", GlobalContrastiveLoss(8), num_samples=100)
    with pytest.raises(DataError, match="outside"):
        wider(z1, z2, torch.tensor([0, 1, 2, 50]), logit_scale=5.0, ctx=StepContext())


@pytest.mark.parametrize("labelled", [True, False])
def test_stats_without_detector_equal_the_scanned_all_true_mask(labelled):
    batch = simclr_batch(b=5, seed=3)
    if labelled:
        batch.anchor_labels = torch.tensor([0, 1, 0, -1, 1] * 2)
        batch.candidate_labels = batch.anchor_labels.clone()
    keep = torch.ones_like(batch.neg_mask)
    fast, scanned = DetectionStats(), DetectionStats()
    for _ in range(2):
        fast.update(batch, keep, keeps_all=True)
        scanned.update(batch, keep)
    assert torch.equal(fast.state(), scanned.state())
    assert fast.state()[1] == 2 * 10 * 8  # negatives: 2 steps x 10 anchors x 8 negatives
    assert (fast.state()[6] > 0) == labelled  # true false negatives only with labels


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_debiased_from_sim_at_large_logit_scale_matches_float64(beta):
    # logits spread up to 200: entries far below the row maximum take the e^-80 floor
    batch = simclr_batch(b=16, d=8, seed=4, dtype=torch.float32)
    sim64 = batch.sim.detach().double().requires_grad_()
    sim32 = batch.sim.detach().clone().requires_grad_()
    out = [
        debiased_info_nce_from_sim(
            s, torch.tensor(100.0), batch.pos_index, batch.neg_mask, 0.1, beta
        )
        for s in (sim32, sim64)
    ]
    assert torch.isfinite(out[0].loss).all()
    torch.testing.assert_close(out[0].loss.double(), out[1].loss, rtol=1e-4, atol=1e-4)
    out[0].loss.sum().backward()
    out[1].loss.sum().backward()
    torch.testing.assert_close(sim32.grad.double(), sim64.grad, rtol=1e-3, atol=1e-3)
