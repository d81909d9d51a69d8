"""Weighted kNN (Wu et al. 2018) against a plain float64 loop and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from debiascl.errors import ConfigError, DataError
from debiascl.eval import knn_eval, knn_predict, knn_scores


def reference_knn_scores(train_x, train_y, test_x, k, t, n_classes):
    """Plain loops in float64: cosine similarity, top-k, exp(s/t) weights, per-class sum."""
    out = np.zeros((len(test_x), n_classes))
    for i, q in enumerate(test_x):
        sims = []
        for j, x in enumerate(train_x):
            cos = float(np.dot(q, x) / (np.linalg.norm(q) * np.linalg.norm(x)))
            sims.append((cos, j))
        sims.sort(key=lambda p: -p[0])
        for cos, j in sims[:k]:
            out[i, train_y[j]] += math.exp(cos / t)
    return out


def expected_hit(scores, target, k):
    """Mean over rows of P(true class in the top k) when tied classes are ordered at random.

    With one true class in a tie group of m classes and `better` classes strictly above, its
    position in the group is uniform on 0..m-1, so it is a hit with chance clip(k - better, 0, m)/m.
    """
    hits = []
    for row, y in zip(np.asarray(scores, dtype=np.float64), target, strict=True):
        better = int(np.sum(row > row[y]))
        m = int(np.sum(row == row[y]))
        hits.append(min(max(k - better, 0), m) / m)
    return float(np.mean(hits))


def blobs(seed, n_train=80, n_test=25, dim=6, n_classes=4, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim)) * 2
    ytr = rng.integers(0, n_classes, n_train)
    yte = rng.integers(0, n_classes, n_test)
    xtr = centres[ytr] + spread * rng.standard_normal((n_train, dim))
    xte = centres[yte] + spread * rng.standard_normal((n_test, dim))
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("k,t", [(1, 0.1), (7, 0.1), (20, 0.5), (80, 0.07)])
def test_scores_match_plain_loop(k, t):
    xtr, ytr, xte, _ = blobs(0)
    ref = reference_knn_scores(xtr, ytr, xte, k, t, 4)
    ours = knn_scores(xtr, ytr, xte, k=k, temperature=t, num_classes=4, cap_k=False).numpy()
    # Scores are scaled per row (stability shift); the normalised vote is what must agree.
    np.testing.assert_allclose(
        ours / ours.sum(1, keepdims=True), ref / ref.sum(1, keepdims=True), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_chunking_does_not_change_scores():
    xtr, ytr, xte, _ = blobs(1)
    whole = knn_scores(xtr, ytr, xte, k=9)
    one_row_at_a_time = knn_scores(xtr, ytr, xte, k=9, max_elements=1)
    three_rows = knn_scores(xtr, ytr, xte, k=9, max_elements=3 * len(xtr))
    torch.testing.assert_close(whole, one_row_at_a_time)
    torch.testing.assert_close(whole, three_rows)


@pytest.mark.parametrize("k", [1, 5, 15])
def test_uniform_vote_matches_sklearn(k):
    xtr, ytr, xte, yte = blobs(2, n_train=120, n_test=60, spread=2.5)
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xtr, ytr)
    ours = knn_predict(xtr, ytr, xte, k=k, weighting="uniform", cap_k=False).numpy()
    votes = sk.predict_proba(xte)
    tied = (votes == votes.max(1, keepdims=True)).sum(1) > 1
    # sklearn sends a vote tie to the lower class; knn_predict draws one of the tied classes
    np.testing.assert_array_equal(ours[~tied], sk.predict(xte)[~tied])
    assert np.all(votes[np.arange(len(ours)), ours] == votes.max(1))
    acc = knn_eval(xtr, ytr, xte, yte, k=k, weighting="uniform", cap_k=False)["accuracy"]
    # sklearn breaks vote ties towards the lower class; our accuracy counts a tie by its expected
    # hit (k=5 and k=15 have tied votes here, so the two differ)
    assert acc == pytest.approx(expected_hit(sk.predict_proba(xte), yte, 1))


def test_large_temperature_is_the_uniform_limit():
    xtr, ytr, xte, _ = blobs(3, n_train=120, n_test=60, spread=2.5)
    k = 10
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xtr, ytr)
    votes = sk.predict_proba(xte)
    top2 = np.sort(votes, axis=1)[:, -2:]
    clear = top2[:, 1] > top2[:, 0]  # rows whose majority vote is not a tie
    assert clear.sum() > 40
    ours = knn_predict(xtr, ytr, xte, k=k, temperature=1e6).numpy()
    np.testing.assert_array_equal(ours[clear], sk.predict(xte)[clear])


def test_tiny_temperature_is_nearest_neighbour_and_finite():
    xtr, ytr, xte, _ = blobs(4, spread=2.0)
    scores = knn_scores(xtr, ytr, xte, k=50, temperature=1e-4)
    assert torch.isfinite(scores).all() and (scores.sum(1) > 0).all()
    nn1 = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(xtr, ytr)
    np.testing.assert_array_equal(scores.argmax(1).numpy(), nn1.predict(xte))


def test_k_larger_than_bank_uses_every_sample():
    xtr, ytr, xte, _ = blobs(5, n_train=12)
    ref = reference_knn_scores(xtr, ytr, xte, 12, 0.2, 4)
    ours = knn_scores(xtr, ytr, xte, k=200, temperature=0.2, num_classes=4, cap_k=False).numpy()
    np.testing.assert_allclose(ours / ours.sum(1, keepdims=True), ref / ref.sum(1, keepdims=True))


def test_eval_accuracy_and_top5_against_reference():
    xtr, ytr, xte, yte = blobs(6, n_classes=7, spread=2.0)
    ref = reference_knn_scores(xtr, ytr, xte, 10, 0.1, 7)
    out = knn_eval(
        torch.tensor(xtr), torch.tensor(ytr), xte, yte, k=10, temperature=0.1, cap_k=False
    )
    assert out["accuracy"] == pytest.approx(expected_hit(ref, yte, 1))
    # classes without any vote tie at 0: the true class among them is a top-5 hit by chance only
    assert out["top5"] == pytest.approx(expected_hit(ref, yte, 5))
    assert (ref == 0).sum(1).max() >= 2, "fixture should have classes tied at zero votes"


def test_float32_inputs_give_float32_scores():
    xtr, ytr, xte, _ = blobs(7)
    scores = knn_scores(xtr.astype(np.float32), ytr, xte.astype(np.float32), k=5)
    assert scores.dtype == torch.float32


def test_bad_inputs_raise():
    xtr, ytr, xte, yte = blobs(8)
    with pytest.raises(DataError, match="columns"):
        knn_scores(xtr, ytr, xte[:, :3])
    with pytest.raises(DataError, match="NaN"):
        bad = xte.copy()
        bad[0, 0] = np.nan
        knn_scores(xtr, ytr, bad)
    with pytest.raises(DataError, match="shape"):
        knn_scores(xtr, ytr[:-1], xte)
    with pytest.raises(ConfigError):
        knn_scores(xtr, ytr, xte, k=0)
    with pytest.raises(ConfigError):
        knn_scores(xtr, ytr, xte, temperature=0.0)
    with pytest.raises(DataError, match="test_y"):
        knn_eval(xtr, ytr, xte, yte + 10)
