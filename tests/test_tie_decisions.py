"""Argmax decisions follow the library's tie rule (docs/reliability.md, issue 10 item 10).

Counted in a metric, a tied argmax is its expectation over a uniformly random tie-break (checked
here against an enumeration of every tie-break); a single predicted label is drawn uniformly among
the tied classes with a seeded generator. Before, every one of these sent ties to class 0.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from debiascl.eval.fairness_audit import leakage_probe
from debiascl.eval.knn import knn_predict
from debiascl.eval.ties import random_tie_argmax
from debiascl.fairness.adversary import AdversarialFairness, AttributeSpec
from debiascl.fairness.metrics import fairness_report


def _tied_sets(scores: np.ndarray) -> list[list[int]]:
    return [list(np.flatnonzero(row == row.max())) for row in scores]


def _reference_rates(scores, y, g, c):
    """Expected per-(class, group) positive rate / TPR / FPR, enumerating every tie-break."""
    combos = list(itertools.product(*_tied_sets(scores)))
    out = {}
    for k in range(c):
        for grp in sorted(set(g)):
            m = g == grp
            pos, neg = m & (y == k), m & (y != k)
            rate = tpr = fpr = 0.0
            for choice in combos:
                pred = np.array(choice) == k
                rate += pred[m].mean()
                tpr += pred[pos].mean() if pos.any() else 0.0
                fpr += pred[neg].mean() if neg.any() else 0.0
            out[k, grp] = (rate / len(combos), tpr / len(combos), fpr / len(combos))
    return out


def test_fairness_report_argmax_ties_are_the_expectation_over_tie_breaks():
    # integer scores: rows 0, 2, 3, 5 have tied top classes
    scores = np.array(
        [[1, 1, 0], [0, 2, 1], [3, 3, 3], [0, 1, 1], [2, 0, 1], [1, 1, 1]], dtype=np.float64
    )
    y = np.array([1, 1, 2, 2, 0, 0])
    g = np.array(["A", "A", "A", "B", "B", "B"])
    rep = fairness_report(scores, y, {"g": g}, "argmax")["attributes"]["g"]
    ref = _reference_rates(scores, y, g, 3)
    dpd, eod = [], []
    for k in range(3):
        groups = rep["per_class"][str(k)]["groups"]
        for grp in ("A", "B"):
            rate, tpr, fpr = ref[k, grp]
            assert groups[grp]["positive_rate"] == pytest.approx(rate, abs=1e-12)
            if groups[grp]["tpr"] is not None:
                assert groups[grp]["tpr"] == pytest.approx(tpr, abs=1e-12)
            if groups[grp]["fpr"] is not None:
                assert groups[grp]["fpr"] == pytest.approx(fpr, abs=1e-12)
        dpd.append(abs(ref[k, "A"][0] - ref[k, "B"][0]))
        tprs = [ref[k, grp][1] for grp in "AB" if groups[grp]["tpr"] is not None]
        fprs = [ref[k, grp][2] for grp in "AB" if groups[grp]["fpr"] is not None]
        gaps = [max(v) - min(v) for v in (tprs, fprs) if v]
        eod.append(max(gaps))
    assert rep["dpd"] == pytest.approx(np.mean(dpd), abs=1e-12)
    assert rep["eod"] == pytest.approx(np.mean(eod), abs=1e-12)


def test_knn_predict_breaks_vote_ties_uniformly_with_a_seed():
    # one training sample per class on orthogonal axes; every query lies on the bisector, so the
    # two votes tie exactly
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    train_y = torch.tensor([0, 1])
    test_x = torch.ones(400, 2, dtype=torch.float64)
    kw = dict(k=2, weighting="uniform", cap_k=False)
    pred = knn_predict(train_x, train_y, test_x, seed=3, **kw)
    share = float((pred == 1).double().mean())
    assert 0.4 < share < 0.6  # Binomial(400, 1/2): 0.4..0.6 is > 4 standard deviations
    assert torch.equal(pred, knn_predict(train_x, train_y, test_x, seed=3, **kw))
    assert not torch.equal(pred, knn_predict(train_x, train_y, test_x, seed=4, **kw))


def test_random_tie_argmax_is_uniform_over_the_tied_set():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (50, 4), generator=gen).double()  # many ties
    tied = _tied_sets(scores.numpy())
    counts = np.zeros((50, 4))
    for seed in range(600):
        pick = random_tie_argmax(scores, seed).numpy()
        assert all(p in t for p, t in zip(pick, tied, strict=True))
        counts[np.arange(50), pick] += 1
    for row, t in zip(counts, tied, strict=True):
        expect = 600 / len(t)
        # each tied class: Binomial(600, 1/m); 5 standard deviations
        assert np.all(
            np.abs(row[t] - expect) < 5 * np.sqrt(600 * (1 / len(t)) * (1 - 1 / len(t))) + 1e-9
        )


def test_leakage_probe_counts_tied_probabilities_by_expectation():
    # collapsed embeddings and a balanced training split: the probe's probabilities are exactly
    # [0.5, 0.5] for every test row
    train_x = np.zeros((40, 4))
    train_a = np.array([0, 1] * 20)
    test_x = np.zeros((10, 4))
    test_a = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    out = leakage_probe(train_x, train_a, test_x, test_a)
    # reference: every order of the two classes, ties broken by that order, averaged
    orders = list(itertools.permutations([0, 1]))
    acc = np.mean([np.mean(test_a == order[0]) for order in orders])
    bal = np.mean(
        [np.mean([np.mean(test_a[test_a == v] == order[0]) for v in (0, 1)]) for order in orders]
    )
    assert out["accuracy"] == pytest.approx(acc, abs=1e-12)  # 0.5; class-0 tie-break gave 0.3
    assert out["balanced_accuracy"] == pytest.approx(bal, abs=1e-12)


def test_adversary_accuracy_counts_tied_logits_by_expectation():
    adv = AdversarialFairness(4, [AttributeSpec("a", 3)])
    logits = torch.zeros(6, 3)
    logits[0] = torch.tensor([2.0, 2.0, 0.0])  # a two-way tie
    t = torch.tensor([1, 0, 0, 0, 2, -1])  # -1: unknown, left out
    _, logs = adv._disc_loss({"a": logits}, {"a": t})
    ref = np.mean([0.5, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert logs["adv/a/disc_acc"] == pytest.approx(ref, abs=1e-6)
