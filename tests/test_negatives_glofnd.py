"""GloFND: the lambda objective, the update rules against float64 references, convergence to
alpha on stationary synthetic similarities, schedules, persistence and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.errors import CheckpointError, ConfigError, DataError
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.thresholds import kth_largest, quantile_rank
from debiascl.objectives import StepContext
from debiascl.pairs import PairwiseBatch, clip_pairs, simclr_pairs


def lambda_objective(nu: float, r: torch.Tensor, alpha: float) -> float:
    """f(nu) = nu * alpha + mean(max(r - nu, 0)), in float64."""
    return float(nu * alpha + torch.clamp(r.double() - nu, min=0).mean())


@pytest.mark.parametrize("n,alpha", [(50, 0.05), (40, 0.1), (37, 0.3), (500, 0.01), (9, 0.5)])
def test_lambda_objective_minimiser_is_kth_largest(n, alpha):
    g = torch.Generator().manual_seed(n)
    r = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1).clamp(-1, 1)
    k = math.ceil(alpha * n - 1e-9)
    kth = torch.sort(r, descending=True).values[k - 1].item()
    best = lambda_objective(kth, r, alpha)
    # f is convex piecewise linear with kinks at the r_j: compare with every kink and a grid.
    candidates = [*r.tolist(), *torch.linspace(-1, 1, 2001, dtype=torch.float64).tolist()]
    assert all(best <= lambda_objective(c, r, alpha) + 1e-12 for c in candidates)
    # Strictly better than the neighbouring order statistics unless alpha * n is an integer.
    srt = torch.sort(r, descending=True).values
    if k < n and abs(alpha * n - round(alpha * n)) > 1e-9:
        assert best < lambda_objective(srt[k].item(), r, alpha)
    if k > 1:
        assert best < lambda_objective(srt[k - 2].item(), r, alpha)
    # The library's order statistic for this rank is the same value.
    got = kth_largest(
        r.float()[None], torch.ones(1, n, dtype=torch.bool), quantile_rank(torch.tensor([n]), alpha)
    )
    assert got.item() == pytest.approx(kth, abs=1e-7)


def _stationary_batch(mu, g, m=256):
    a = mu.shape[0]
    sim = (mu[:, None] + 0.15 * torch.randn(a, m, generator=g)).clamp(-1, 1)
    neg = torch.ones(a, m, dtype=torch.bool)
    neg[:, 0] = False  # column 0 plays the positive
    return PairwiseBatch(
        "image_to_text",
        sim,
        torch.zeros(a, dtype=torch.long),
        neg,
        torch.arange(a),
        torch.arange(m),
        None,
        None,
        a,
    )


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("sgd", 1.0)])
def test_removed_fraction_converges_to_alpha(optimizer, lr):
    alpha, a, steps = 0.05, 32, 150
    g = torch.Generator().manual_seed(3)
    mu = torch.rand(a, generator=g) * 0.6 - 0.3
    det = GloFNDDetector(
        a, alpha, mode="image_text", directions=("image_to_text",), optimizer=optimizer, lr=lr
    )
    removed = []
    for _ in range(steps):
        batch = _stationary_batch(mu, g)
        keep = det(batch, StepContext(epoch=0))
        removed.append(float((~keep & batch.neg_mask).sum() / batch.neg_mask.sum()))
    late = sum(removed[-50:]) / 50
    assert late == pytest.approx(alpha, rel=0.1)
    assert removed[0] == 0.0  # starts at lambda = 1: removes nothing
    # Each lambda tracks its own anchor's population (1 - alpha)-quantile, not a shared one.
    true_q = mu + 0.15 * 1.6448536  # normal quantile at 0.95
    lam = det.thresholds("image_to_text", torch.arange(a))
    assert (lam - true_q).abs().mean() < 0.03
    assert torch.corrcoef(torch.stack([lam, true_q]))[0, 1] > 0.95


def _reference_pooled_grad(sim, neg, lam_img, b, alpha):
    """float64: d_i = alpha - (#negatives of both views above lambda_i) / (#negatives)."""
    sim, lam = sim.double(), lam_img.double()
    grads = []
    for i in range(b):
        rows = [i, i + b]
        above = sum(int(((sim[r] > lam[i]) & neg[r]).sum()) for r in rows)
        total = sum(int(neg[r].sum()) for r in rows)
        grads.append(alpha - above / total)
    return torch.tensor(grads, dtype=torch.float64)


def _adam_reference(lam, m, v, d, step, lr=0.05, b1=0.9, b2=0.98, eps=1e-8):
    m = b1 * m + (1 - b1) * d
    v = b2 * v + (1 - b2) * d * d
    lam = lam - lr * (m / (1 - b1**step)) / (torch.sqrt(v / (1 - b2**step)) + eps)
    return lam.clamp(-1, 1), m, v


def test_unimodal_adam_update_pools_views_and_mask_uses_new_lambda():
    torch.manual_seed(0)
    b, n, alpha = 6, 20, 0.2
    det = GloFNDDetector(n, alpha)
    ids = torch.tensor([3, 11, 0, 19, 7, 5])
    # start inside the bulk of the similarities so the pooled fractions matter
    lam = torch.linspace(-0.2, 0.3, b, dtype=torch.float64)
    det.tables["image"].write(ids, torch.stack([lam.float(), *[torch.zeros(b)] * 3], dim=1))
    m = torch.zeros(b, dtype=torch.float64)
    v = torch.zeros(b, dtype=torch.float64)
    for step in (1, 2, 3):
        z1, z2 = torch.randn(b, 8), torch.randn(b, 8)
        batch = simclr_pairs(z1, z2, ids)
        keep = det(batch, StepContext(epoch=0))
        d = _reference_pooled_grad(batch.sim.detach(), batch.neg_mask, lam, b, alpha)
        lam, m, v = _adam_reference(lam, m, v, d, step)
        rows = det.tables["image"].read(ids)
        torch.testing.assert_close(rows[:, 0].double(), lam, atol=1e-6, rtol=0)
        torch.testing.assert_close(rows[:, 1].double(), m, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(rows[:, 2].double(), v, atol=1e-9, rtol=1e-5)
        assert rows[:, 3].tolist() == [float(step)] * b
        assert 0 < (~keep & batch.neg_mask).sum() < batch.neg_mask.sum()
        want_keep = batch.sim.detach() <= rows[:, 0].repeat(2)[:, None]
        assert torch.equal(keep, want_keep)
    untouched = det.tables["image"].read(torch.tensor([1, 2]))
    assert untouched.tolist() == [[1.0, 0.0, 0.0, 0.0]] * 2  # only batch anchors change


def test_sgd_is_projected_and_bimodal_uses_one_table_per_direction():
    torch.manual_seed(1)
    b, n, alpha, lr = 5, 12, 0.25, 3.0
    det = GloFNDDetector(n, alpha, mode="image_text", optimizer="sgd", lr=lr)
    ids = torch.tensor([0, 4, 8, 9, 11])
    img, txt = torch.randn(b, 6), torch.randn(b, 6)
    i2t, t2i = clip_pairs(img, txt, ids)
    det.tables["image_to_text"].write(ids, torch.tensor([[0.2, 0, 0, 0]] * b))
    det(i2t, StepContext())
    sim = i2t.sim.detach().double()
    above = ((sim > 0.2) & i2t.neg_mask).sum(1).double()
    want = (0.2 - lr * (alpha - above / (b - 1))).clamp(-1, 1)
    torch.testing.assert_close(
        det.thresholds("image_to_text", ids).double(), want, atol=1e-6, rtol=0
    )
    assert det.tables["text_to_image"].data[:, 3].sum() == 0  # other direction untouched
    det(t2i, StepContext())
    want_t = (1.0 - lr * (alpha - 0.0)) * torch.ones(b, dtype=torch.float64)
    torch.testing.assert_close(det.thresholds("text_to_image", ids).double(), want_t)


def test_batch_quantile_init_then_bias_corrected_adam():
    torch.manual_seed(2)
    b, n, alpha = 4, 10, 0.3
    det = GloFNDDetector(n, alpha, init="batch_quantile")
    ids = torch.tensor([1, 2, 5, 9])
    batch = simclr_pairs(torch.randn(b, 5), torch.randn(b, 5), ids)
    keep = det(batch, StepContext())
    sim = batch.sim.detach().double()
    pooled = torch.cat([sim[:b], sim[b:]], dim=1)
    negs = torch.cat([batch.neg_mask[:b], batch.neg_mask[b:]], dim=1)
    # the batch quantile rule: torch's default (linear) quantile of the pooled negatives
    q = torch.stack([torch.quantile(pooled[i][negs[i]], 1 - alpha) for i in range(b)])
    rows = det.tables["image"].read(ids).double()
    torch.testing.assert_close(rows[:, 0], q, atol=1e-7, rtol=0)
    assert rows[:, 1:3].abs().sum() == 0 and rows[:, 3].tolist() == [1.0] * b
    assert torch.equal(keep, batch.sim.detach() <= rows[:, 0].float().repeat(2)[:, None])
    # second visit: first Adam step (bias correction with step count 1)
    batch2 = simclr_pairs(torch.randn(b, 5), torch.randn(b, 5), ids)
    det(batch2, StepContext())
    d = _reference_pooled_grad(batch2.sim.detach(), batch2.neg_mask, q, b, alpha)
    lam, _, _ = _adam_reference(
        q, torch.zeros(b, dtype=torch.float64), torch.zeros(b, dtype=torch.float64), d, 1
    )
    torch.testing.assert_close(det.thresholds("image", ids).double(), lam, atol=1e-6, rtol=0)


def test_start_epochs_separate_updating_from_masking():
    torch.manual_seed(3)
    det = GloFNDDetector(10, 0.2, start_epoch=3, update_start_epoch=1)
    ids = torch.arange(4)
    batch = simclr_pairs(torch.randn(4, 5), torch.randn(4, 5), ids)
    keep = det(batch, StepContext(epoch=0))
    assert keep.all() and det.tables["image"].data[:, 3].sum() == 0  # nothing happens
    keep = det(batch, StepContext(epoch=1))
    assert keep.all() and det.tables["image"].data[ids, 3].tolist() == [1.0] * 4  # learns only
    keep = det(batch, StepContext(epoch=3))
    lam = det.thresholds("image", ids)
    assert torch.equal(keep, batch.sim.detach() <= lam.repeat(2)[:, None])
    before = det.tables["image"].data.clone()
    det(batch, StepContext(epoch=5, training=False))  # evaluation: masks, never updates
    assert torch.equal(before, det.tables["image"].data)


def test_checkpoint_round_trip_reset_on_resume_and_size_mismatch():
    torch.manual_seed(4)
    det = GloFNDDetector(16, 0.1, mode="image_text", lr=0.2)
    ids = torch.tensor([0, 3, 7, 15])
    for _ in range(3):
        for batch in clip_pairs(torch.randn(4, 5), torch.randn(4, 5), ids):
            det(batch, StepContext())
    state = det.state_dict()
    restored = GloFNDDetector(16, 0.1, mode="image_text", lr=0.2)
    restored.load_state_dict(state)
    for name in det.tables:
        assert torch.equal(restored.tables[name].data, det.tables[name].data)
    fresh = GloFNDDetector(16, 0.1, mode="image_text", reset_on_resume=True)
    fresh.load_state_dict(state)
    assert all(
        torch.equal(fresh.tables[k].data, GloFNDDetector(16, 0.1, mode="image_text").tables[k].data)
        for k in det.tables
    )
    with pytest.raises(CheckpointError, match="17 samples"):
        GloFNDDetector(17, 0.1, mode="image_text").load_state_dict(state)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_is_config_error(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        GloFNDDetector(10, alpha)


def test_bad_ids_are_data_errors():
    det = GloFNDDetector(5, 0.1, mode="image_text")
    out_of_range, _ = clip_pairs(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 5]))
    with pytest.raises(DataError, match="outside"):
        det(out_of_range, StepContext())
    dup, _ = clip_pairs(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 2, 2]))
    with pytest.raises(DataError, match="duplicate"):
        det(dup, StepContext())
    uni = GloFNDDetector(5, 0.1)
    dup_img = simclr_pairs(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([4, 1, 4]))
    with pytest.raises(DataError, match="duplicate"):
        uni(dup_img, StepContext())


def test_diagnostics_summarise_visited_thresholds():
    det = GloFNDDetector(8, 0.1)
    det.tables["image"].write(
        torch.tensor([1, 2, 5]), torch.tensor([[0.1, 0, 0, 1], [0.3, 0, 0, 2], [0.5, 0, 0, 1.0]])
    )
    d = det.diagnostics()
    assert d["lambda/image/visited_fraction"] == pytest.approx(3 / 8)
    assert d["lambda/image/mean"] == pytest.approx(0.3)
    assert d["lambda/image/min"] == pytest.approx(0.1) and d["lambda/image/max"] == pytest.approx(
        0.5
    )
    assert d["lambda/image/p50"] == pytest.approx(0.3)
