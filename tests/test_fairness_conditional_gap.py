"""Class-conditional group-mean gap (term ``conditional_gap``) and the Fisher gap's running metric.

References are written plainly in float64 loops; the key property is that per-class mark
directions which cancel over the classes (so the label-balanced :func:`group_mean_gap` is ~0)
are still penalised.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from debiascl.config import load_config
from debiascl.errors import ConfigError
from debiascl.fairness.penalties import (
    class_conditional_mean_gap,
    group_mean_gap,
    within_group_covariance,
)
from debiascl.objectives import StepContext
from debiascl.train.trainer import Trainer


def _reference(z, t, y, k, c, prior_s=None, prior_n=None, z_value=None) -> float:
    """``z_value``: rows at which the pooled mean's *value* is taken (default z); the mean then
    moves with z only through the batch mean (the straight-through estimator's linearisation)."""
    z = z.double()
    z0 = z if z_value is None else z_value.double()
    sigma = z.var(0, unbiased=False).add(1e-6).sqrt()
    per_class = []
    for cls in range(c):
        mus = []
        for v in range(k):
            cell = (y == cls) & (t == v)
            s = z0[cell].sum(0)
            n_b = float(cell.sum())
            n = n_b
            if prior_s is not None:
                s = s + prior_s[cls, v].double()
                n += float(prior_n[cls, v])
            if n > 0:
                mu = s / n
                if n_b > 0:
                    mu = mu + (z[cell].mean(0) - z0[cell].mean(0))
                mus.append(mu)
        if len(mus) < 2:
            continue
        bar = sum(mus) / len(mus)
        per_class.append(sum(float((((m - bar) / sigma) ** 2).mean()) for m in mus) / len(mus))
    return sum(per_class) / len(per_class)


def test_matches_plain_reference_with_missing_rows() -> None:
    g = torch.Generator().manual_seed(0)
    n, d, k, c = 60, 5, 3, 4
    z = torch.randn(n, d, generator=g)
    t = torch.randint(-1, k, (n,), generator=g)
    y = torch.randint(-1, c, (n,), generator=g)
    gap, sums, counts = class_conditional_mean_gap(z, t, y, k, c)
    keep = (t >= 0) & (y >= 0)
    assert gap.item() == pytest.approx(_reference(z[keep], t[keep], y[keep], k, c), rel=1e-5)
    assert counts.sum().item() == keep.sum().item()
    assert torch.allclose(sums.sum((0, 1)), z[keep].sum(0), atol=1e-5)


def test_cancelling_class_gaps_are_penalised() -> None:
    """Class 0 has mark gap +e0, class 1 gap -e0 (balanced groups): the overall group means are
    equal, so group_mean_gap is 0, but the attribute is readable within each class."""
    z = torch.zeros(8, 3)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    t = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    z[:, 1] = torch.tensor([0.0, 0.2, 1.0, 1.2, 0.0, 0.2, -1.0, -0.8])
    z[:, 2] = y.float() * 3  # class direction, no attribute
    assert group_mean_gap(z, t, 2).item() == pytest.approx(0.0, abs=1e-6)
    gap, _, _ = class_conditional_mean_gap(z, t, y, 2, 2)
    assert gap.item() > 0.1
    assert gap.item() == pytest.approx(_reference(z, t, y, 2, 2), rel=1e-5)
    # equal means in every class (class offsets differ): exactly zero
    z2 = z.clone()
    z2[:, 1] = torch.tensor([0.0, 0.2, 0.2, 0.0, 5.0, 5.2, 5.2, 5.0])
    assert class_conditional_mean_gap(z2, t, y, 2, 2)[0].item() == pytest.approx(0.0, abs=1e-9)


def test_prior_is_pooled_and_gets_no_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    z_old = torch.randn(40, 4, generator=g)
    t_old, y_old = torch.randint(0, 2, (40,), generator=g), torch.randint(0, 3, (40,), generator=g)
    _, ps, pn = class_conditional_mean_gap(z_old, t_old, y_old, 2, 3)
    z = torch.randn(30, 4, generator=g, requires_grad=True)
    t, y = torch.randint(0, 2, (30,), generator=g), torch.randint(0, 3, (30,), generator=g)
    gap, _, _ = class_conditional_mean_gap(z, t, y, 2, 3, ps, pn)
    # pooled means = means of old and new rows together; sigma from the current batch only
    assert gap.item() == pytest.approx(_reference(z.detach(), t, y, 2, 3, ps, pn), rel=1e-5)
    gap.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # finite differences: the pooled value is held at z, the rows move the batch mean (and sigma);
    # a plain pooled mean would give each row only 1 / (n + prior count) and fail this
    z0 = z.detach().clone()
    for i, j in ((3, 2), (17, 0)):
        eps = 1e-3
        zp, zm = z0.clone().double(), z0.clone().double()
        zp[i, j] += eps
        zm[i, j] -= eps
        fd = (_reference(zp, t, y, 2, 3, ps, pn, z0) - _reference(zm, t, y, 2, 3, ps, pn, z0)) / (
            2 * eps
        )
        assert z.grad[i, j].item() == pytest.approx(fd, rel=1e-2, abs=1e-4)


def _trainer(tmp_path: Path, *extra: str) -> Trainer:
    cfg = load_config(
        "synth_attr_adfair",
        [
            "data.train_size=256",
            "data.test_size=64",
            "model.text_encoder=bag_of_words",
            "model.width=8",
            "model.embed_dim=16",
            "model.proj_hidden_dim=32",
            "train.epochs=1",
            "train.batch_size=64",
            "train.threads=1",
            "fairness.terms=[{name: conditional_gap, weight: 1}]",
            f"output_dir={tmp_path}",
            *extra,
        ],
    )
    return Trainer(cfg, run_dir=tmp_path / "run")


def test_running_state_is_decayed_sum(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "fairness.terms=[{name: conditional_gap, weight: 1, momentum: 0.5}]")
    adv = tr.fairness
    term = adv.terms["conditional_gap"]
    g = torch.Generator().manual_seed(2)
    ctx = StepContext(epoch=0, step=0, training=True, progress=0.0)
    batches = []
    for _ in range(3):
        z = torch.randn(16, 16, generator=g)
        batch = {
            "attrs": torch.randint(0, 2, (16, 1), generator=g),
            "label": torch.randint(0, 10, (16,), generator=g),
        }
        batches.append((z, batch))
        adv(z, z, batch, ctx)
    # expected: 0.25 * S1 + 0.5 * S2 + S3 of the (class, value) cells of the normalised z
    exp_s = torch.zeros(10, 2, 16)
    exp_n = torch.zeros(10, 2)
    for z, batch in batches:
        zn = torch.nn.functional.normalize(z, dim=-1) if adv.normalize else z
        exp_s *= 0.5
        exp_n *= 0.5
        for r in range(16):
            cls, v = int(batch["label"][r]), int(batch["attrs"][r, 0])
            exp_s[cls, v] += zn[r]
            exp_n[cls, v] += 1
    assert torch.allclose(term.counts[0, :, :2], exp_n)
    assert torch.allclose(term.sums[0, :, :2], exp_s, atol=1e-5)
    assert "terms.conditional_gap.sums" in adv.state_dict()  # checkpointed


def test_conditional_gap_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mean_gap_conditional.* moved: .*conditional_gap"):
        _trainer(tmp_path, "fairness.enabled=true", "fairness.mean_gap_conditional=true",
                 "fairness.mean_gap_weight=1")  # fmt: skip
    with pytest.raises(ConfigError, match="momentum"):  # momentum must be in [0, 1)
        _trainer(tmp_path, "fairness.terms=[{name: conditional_gap, momentum: 1.0}]")
    from debiascl.fairness.adversary import AttributeSpec
    from debiascl.fairness.terms import FAIRNESS_TERMS, TermSetup, parse_term_settings

    settings = parse_term_settings({"name": "conditional_gap"})
    with pytest.raises(ConfigError, match="class labels"):  # needs labelled training data
        FAIRNESS_TERMS.get("conditional_gap")(settings, TermSetup([AttributeSpec("m", 2)], 4))


def _within_reference(z, t, k, w) -> torch.Tensor:
    z, w = z.double(), w.double()
    out = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
    for v in range(k):
        rows = t == v
        mu = (w[rows, None] * z[rows]).sum(0) / w[rows].sum()
        for i in torch.nonzero(rows).flatten().tolist():
            out += w[i] * torch.outer(z[i] - mu, z[i] - mu)
    return out / w[t >= 0].sum()


def test_within_group_covariance_and_metric() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(50, 4, generator=g)
    t = torch.randint(-1, 3, (50,), generator=g)
    w = torch.rand(50, generator=g) + 0.1
    cov = within_group_covariance(z, t, 3, w)
    assert torch.allclose(cov.double(), _within_reference(z, t, 3, w), atol=1e-5)
    # the batch's own covariance as metric reproduces the default Fisher gap
    base = group_mean_gap(z, t, 3, w, whiten=True, shrinkage=0.2)
    same = group_mean_gap(z, t, 3, w, whiten=True, shrinkage=0.2, metric=cov)
    assert same.item() == pytest.approx(base.item(), rel=1e-5)
    # an explicit metric: sum_k p_k d_k^T M^-1 d_k / D with M the shrunk metric, by hand
    metric = torch.diag(torch.tensor([1.0, 2.0, 4.0, 8.0]))
    gap = group_mean_gap(z, t, 3, w, whiten=True, shrinkage=0.5, metric=metric)
    keep = t >= 0
    zz, tt, ww = z[keep].double(), t[keep], w[keep].double()
    mu = (ww[:, None] * zz).sum(0) / ww.sum()
    shrunk = 0.5 * metric.double() + 0.5 * metric.diagonal().double().mean() * torch.eye(4)
    ref = 0.0
    for v in range(3):
        r = tt == v
        d = (ww[r, None] * zz[r]).sum(0) / ww[r].sum() - mu
        ref += float(ww[r].sum() / ww.sum()) * float(d @ torch.linalg.solve(shrunk, d)) / 4
    assert gap.item() == pytest.approx(ref, rel=1e-5)


def test_running_covariance_is_bias_corrected_ema(tmp_path: Path) -> None:
    tr = _trainer(
        tmp_path,
        "fairness.terms=[{name: fisher_gap, momentum: 0.5, shrinkage: 0.01}]",
    )
    adv = tr.fairness
    term = adv.terms["fisher_gap"]
    assert term.shrinkage == 0.01
    g = torch.Generator().manual_seed(4)
    ctx = StepContext(epoch=0, step=0, training=True, progress=0.0)
    covs = []
    for _ in range(2):
        z = torch.randn(32, 16, generator=g)
        batch = {
            "attrs": torch.randint(0, 2, (32, 1), generator=g),
            "label": torch.randint(0, 10, (32,), generator=g),
        }
        zn = torch.nn.functional.normalize(z, dim=-1) if adv.normalize else z
        w = adv.sample_weights(batch["label"], batch["attrs"])
        covs.append(_within_reference(zn, batch["attrs"][:, 0], 2, w[:, 0]))
        adv(z, z, batch, ctx)
    expected = (0.5 * 0.5 * covs[0] + 0.5 * covs[1]) / (1 - 0.5**2)
    assert term.cov_steps[0].item() == 2
    assert torch.allclose(term.cov[0].double() / (1 - 0.5**2), expected, atol=1e-6)
    # evaluation passes read the state without updating it
    before = term.cov.clone()
    adv(z, z, batch, StepContext(epoch=0, step=0, training=False, progress=0.0))
    assert torch.equal(term.cov, before)
