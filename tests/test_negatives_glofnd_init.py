"""GloFND right after the batch-quantile initialisation, on synthetic stationary similarities.

With zero Adam moments and bias correction (``moment_init="zero"``), the first update after the
quantile init moves every threshold by exactly lr in the sign of one noisy gradient: the removal
fraction is biased upwards and spread across anchors. ``moment_init="binomial"`` initialises the
moments as estimates (m = 0, v = alpha (1 - alpha) / n) and drops the bias correction. References
are float64 and written here; population removal fractions use the Gaussian tail in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.compose import build_detector
from debiascl.config import load_config
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import StepContext
from debiascl.pairs import PairwiseBatch, simclr_pairs

SD = 0.1  # within-anchor spread of the synthetic similarities
M = 256  # columns per row; column 0 plays the positive, so 255 negatives


def _batch(mu: torch.Tensor, g: torch.Generator) -> PairwiseBatch:
    a = mu.shape[0]
    sim = (mu[:, None] + SD * torch.randn(a, M, generator=g)).clamp(-1, 1)
    neg = torch.ones(a, M, dtype=torch.bool)
    neg[:, 0] = False
    return PairwiseBatch(
        "image_to_text",
        sim,
        torch.zeros(a, dtype=torch.long),
        neg,
        torch.arange(a),
        torch.arange(M),
        None,
        None,
        a,
    )


def _population_removal(lam: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """float64 P(s > lambda) for s ~ N(mu, SD^2): the fraction of *all* negatives removed."""
    z = (lam.double() - mu.double()) / SD
    return 0.5 * torch.erfc(z / math.sqrt(2.0))


def _reference_grad(batch: PairwiseBatch, lam: torch.Tensor, alpha: float) -> torch.Tensor:
    """float64 d_i = alpha - (fraction of row i's negatives above lambda_i), one row at a time."""
    out = []
    for i in range(batch.sim.shape[0]):
        r = batch.sim[i][batch.neg_mask[i]].double()
        out.append(alpha - float((r > lam[i].double()).sum()) / r.numel())
    return torch.tensor(out, dtype=torch.float64)


def _init_then_one_update(moment_init: str, a: int = 600, alpha: float = 0.05):
    g = torch.Generator().manual_seed(7)
    mu = torch.rand(a, generator=g) * 0.4 - 0.2
    det = GloFNDDetector(
        a,
        alpha,
        mode="image_text",
        directions=("image_to_text",),
        init="batch_quantile",
        moment_init=moment_init,
    )
    ids = torch.arange(a)
    det(_batch(mu, g), StepContext())
    lam0 = det.thresholds("image_to_text", ids).clone()
    second = _batch(mu, g)
    det(second, StepContext())
    return det, mu, lam0, det.thresholds("image_to_text", ids).clone(), second


def test_zero_moments_first_step_is_a_full_lr_jump_that_biases_removal():
    alpha, lr = 0.05, 0.05
    _det, mu, lam0, lam1, second = _init_then_one_update("zero")
    d = _reference_grad(second, lam0, alpha)
    # Adam at step 1 from zero moments: m_hat = d, v_hat = d^2, so the step is lr * sign(d).
    want = (lam0.double() - lr * torch.sign(d)).clamp(-1, 1)
    torch.testing.assert_close(lam1.double(), want, atol=1e-6, rtol=0)
    assert (d != 0).all() and (lam1 - lam0).abs().min() > 0.999 * lr
    # Up and down are equally likely (the gradient is centred at the quantile) ...
    up = float((lam1 > lam0).double().mean())
    assert 0.4 < up < 0.6
    # ... but the jump is large next to the spread of the similarities, and the Gaussian tail is
    # convex, so the removal fraction rises on average and scatters across anchors.
    before, after = _population_removal(lam0, mu), _population_removal(lam1, mu)
    # The batch quantile of n iid negatives sits at order-statistic position d = alpha (n - 1)
    # from the top (numpy's rule); its expected population tail is (d + 1) / (n + 1).
    n = M - 1
    assert before.mean() == pytest.approx((alpha * (n - 1) + 1) / (n + 1), abs=0.0015)
    assert after.mean() > alpha + 0.01
    assert after.std() > 2.5 * before.std()


def test_binomial_moments_keep_removal_at_alpha_after_the_first_step():
    alpha = 0.05
    det, mu, lam0, lam1, _second = _init_then_one_update("binomial")
    before, after = _population_removal(lam0, mu), _population_removal(lam1, mu)
    assert after.mean() == pytest.approx(alpha, abs=0.003)
    assert after.std() < 1.1 * before.std()
    # the step is a fraction of lr, not the full lr of the zero-moment rule
    assert (lam1 - lam0).abs().mean() < 0.2 * det.rule.lr


def _reference_pooled(sim, neg, lam, b, alpha):
    """float64 pooled gradient over both views' rows and the pooled negative count."""
    sim, lam = sim.double(), lam.double()
    grads, counts = [], []
    for i in range(b):
        rows = [i, i + b]
        above = sum(int(((sim[r] > lam[i]) & neg[r]).sum()) for r in rows)
        total = sum(int(neg[r].sum()) for r in rows)
        grads.append(alpha - above / total)
        counts.append(total)
    return torch.tensor(grads, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)


def test_binomial_moments_exact_update_reference():
    torch.manual_seed(5)
    b, n, alpha, lr, b1, b2, eps = 5, 12, 0.2, 0.05, 0.5, 0.98, 1e-8
    det = GloFNDDetector(
        n, alpha, init="batch_quantile", moment_init="binomial", lr=lr, beta1=b1, beta2=b2
    )
    ids = torch.tensor([0, 3, 4, 8, 11])
    batch = simclr_pairs(torch.randn(b, 6), torch.randn(b, 6), ids)
    det(batch, StepContext())
    sim = batch.sim.detach().double()
    pooled = torch.cat([sim[:b], sim[b:]], dim=1)
    negs = torch.cat([batch.neg_mask[:b], batch.neg_mask[b:]], dim=1)
    q = torch.stack([torch.quantile(pooled[i][negs[i]], 1 - alpha) for i in range(b)])
    n_pooled = negs.sum(1).double()  # 2 (2b - 2) negatives per image
    lam, m, v = q, torch.zeros(b, dtype=torch.float64), alpha * (1 - alpha) / n_pooled
    rows = det.tables["image"].read(ids).double()
    torch.testing.assert_close(rows[:, 0], lam, atol=1e-7, rtol=0)
    torch.testing.assert_close(rows[:, 1], m, atol=0, rtol=0)
    torch.testing.assert_close(rows[:, 2], v, atol=1e-9, rtol=1e-6)
    for visit in (2, 3, 4):
        batch = simclr_pairs(torch.randn(b, 6), torch.randn(b, 6), ids)
        keep = det(batch, StepContext())
        d, _ = _reference_pooled(batch.sim.detach(), batch.neg_mask, lam, b, alpha)
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        lam = (lam - lr * m / (torch.sqrt(v) + eps)).clamp(-1, 1)  # no bias correction
        rows = det.tables["image"].read(ids).double()
        torch.testing.assert_close(rows[:, 0], lam, atol=1e-6, rtol=0)
        torch.testing.assert_close(rows[:, 1], m, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(rows[:, 2], v, atol=1e-9, rtol=1e-5)
        assert rows[:, 3].tolist() == [float(visit)] * b
        assert torch.equal(keep, batch.sim.detach() <= rows[:, 0].float().repeat(2)[:, None])


def test_binomial_moments_average_batches_better_than_one_batch_quantile():
    """Stationary data: after some visits each lambda is closer to its anchor's population
    quantile than a single batch's quantile (FNC's threshold) is, and removal stays at alpha."""
    alpha, a = 0.05, 300
    g = torch.Generator().manual_seed(11)
    mu = torch.rand(a, generator=g) * 0.4 - 0.2
    det = GloFNDDetector(
        a,
        alpha,
        mode="image_text",
        directions=("image_to_text",),
        init="batch_quantile",
        moment_init="binomial",
        beta1=0.5,
        lr=0.01,
    )
    for _ in range(20):
        det(_batch(mu, g), StepContext())
    lam = det.thresholds("image_to_text", torch.arange(a)).double()
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - alpha, dtype=torch.float64))
    true_q = mu.double() + SD * z
    batch = _batch(mu, g)
    k = math.ceil(alpha * (M - 1))
    fnc = torch.sort(batch.sim[:, 1:].double(), dim=1, descending=True).values[:, k - 1]
    assert (lam - true_q).abs().mean() < 0.7 * (fnc - true_q).abs().mean()
    assert _population_removal(lam, mu).mean() == pytest.approx(alpha, abs=0.004)


@pytest.mark.parametrize(
    "kwargs", [{"init": "one"}, {"init": "batch_quantile", "optimizer": "sgd", "lr": 1.0}]
)
def test_binomial_moments_need_batch_quantile_and_adam(kwargs):
    with pytest.raises(ConfigError, match="moment_init"):
        GloFNDDetector(10, 0.1, moment_init="binomial", **kwargs)
    with pytest.raises(ConfigError, match="moment_init"):
        GloFNDDetector(10, 0.1, moment_init="warm")


def test_config_passes_moment_init_to_the_detector():
    cfg = load_config("fmnist_clip_glofnd", ["negatives.glofnd.moment_init=zero"])
    det = build_detector(cfg, DatasetInfo(num_samples=10))
    assert det.moment_init == "zero"
    cfg = load_config("fmnist_clip_glofnd", ["negatives.glofnd.moment_init=binomial"])
    assert build_detector(cfg, DatasetInfo(num_samples=10)).moment_init == "binomial"
