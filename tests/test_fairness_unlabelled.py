"""Unlabelled rows (label -1) in label-conditioned fairness statistics (docs/reliability.md).

``fairness.balance=label`` weights rows by P(a)/P(a|y); the conditional gap compares groups
within each class. A row whose class is unknown has no such weight and no class: it is left out
(weight 0, not in any class cell), never treated as the last class (index -1) nor kept at weight
1, which would bring back the class/attribute correlation the balance removes. Every value is
checked against a float64 reference written here.
"""

from __future__ import annotations

import pytest
import torch

from debiascl.fairness.adversary import AttributeSpec
from debiascl.fairness.penalties import (
    class_conditional_mean_gap,
    group_mean_gap,
    label_balance_table,
)
from debiascl.fairness.terms import FAIRNESS_TERMS, FairnessTerms, TermSetup, parse_term_settings
from debiascl.fairness.terms.base import TermInputs


def _data(seed: int = 0, n: int = 60, c: int = 3, k: int = 2, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    a = (torch.rand(n, generator=g) < 0.2 + 0.3 * y / (c - 1)).long()  # a depends on y
    z = torch.randn(n, d, generator=g, dtype=torch.float64) + a[:, None] + y[:, None] * 0.5
    y_batch = y.clone()
    y_batch[::4] = -1  # a quarter of the batch is unlabelled
    return z, y, a, y_batch, c, k


def _reference_weights(y_train, a_train, y, a, c, k):
    """P(a)/P(a|y) by counting, in float64; 0 for an unknown label."""
    n = len(y_train)
    w = torch.zeros(len(y), dtype=torch.float64)
    for i in range(len(y)):
        if y[i] < 0:
            continue
        p_a = float((a_train == a[i]).sum()) / n
        in_class = y_train == y[i]
        p_a_y = float((in_class & (a_train == a[i])).sum()) / float(in_class.sum())
        w[i] = p_a / p_a_y
    return w


def _reference_gap(z, a, w, k):
    """sum_k p_k mean_d ((mu_k - mu) / sigma)^2 over rows with weight > 0, float64."""
    rows = w > 0
    z, a, w = z[rows], a[rows], w[rows]
    total = w.sum()
    mu = (w[:, None] * z).sum(0) / total
    sigma = ((w[:, None] * (z - mu) ** 2).sum(0) / total + 1e-6).sqrt()
    gap = torch.zeros((), dtype=torch.float64)
    for v in range(k):
        m = a == v
        mu_v = (w[m, None] * z[m]).sum(0) / w[m].sum()
        gap += w[m].sum() / total * (((mu_v - mu) / sigma) ** 2).mean()
    return gap


def test_balance_weights_leave_unlabelled_rows_out():
    z, y, a, y_batch, c, k = _data()
    table = label_balance_table(y, a, c, k)[:, None, :]  # (C, A=1, K)
    stack = FairnessTerms([], [0], balance_table=table)
    w = stack.sample_weights(y_batch, a[:, None])[:, 0].double()
    ref = _reference_weights(y, a, y_batch, a, c, k)
    torch.testing.assert_close(w, ref, rtol=1e-6, atol=1e-7)
    gap = group_mean_gap(z, a, k, w.float())
    assert float(gap) == pytest.approx(float(_reference_gap(z, a, ref, k)), rel=1e-5)


def test_conditional_gap_ignores_unlabelled_rows():
    z, _, a, y_batch, c, k = _data(1)
    gap, sums, counts = class_conditional_mean_gap(z, a, y_batch, k, c)
    keep = y_batch >= 0
    zk, ak, yk = z[keep], a[keep], y_batch[keep]
    sigma = (zk.var(0, unbiased=False) + 1e-6).sqrt()
    per_class = []
    for cls in range(c):
        mus = [
            zk[(yk == cls) & (ak == v)].mean(0) for v in range(k) if ((yk == cls) & (ak == v)).any()
        ]
        if len(mus) < 2:
            continue
        mu = torch.stack(mus)
        per_class.append((((mu - mu.mean(0)) / sigma) ** 2).mean(-1).mean())
    assert float(gap) == pytest.approx(float(torch.stack(per_class).mean()), rel=1e-5)
    for cls in range(c):  # the last class holds only its own rows, not the unlabelled ones
        for v in range(k):
            m = (yk == cls) & (ak == v)
            assert float(counts[cls, v]) == float(m.sum())
            torch.testing.assert_close(sums[cls, v].double(), zk[m].sum(0), rtol=1e-5, atol=1e-5)


def test_running_fisher_metric_keeps_its_value_on_an_unlabelled_batch():
    z, y, a, _, c, k = _data(2)
    settings = parse_term_settings({"name": "fisher_gap", "momentum": 0.5})
    term = FAIRNESS_TERMS.get("fisher_gap")(
        settings, TermSetup([AttributeSpec("a", k)], z.shape[1])
    )
    table = label_balance_table(y, a, c, k)[:, None, :]
    stack = FairnessTerms([term], [0], balance_table=table)

    def step(labels):
        x = TermInputs(
            z=z.float(),
            attrs=a[:, None],
            weights=stack.sample_weights(labels, a[:, None]),
            labels=labels,
            epoch=0.0,
            step_epoch=0,
            training=True,
        )
        term(x)

    step(y)
    before = term.cov.clone()
    step(torch.full_like(y, -1))  # every label unknown: no usable row under the balance
    torch.testing.assert_close(term.cov, before)
    assert float(term.cov_steps[0]) == 1.0
