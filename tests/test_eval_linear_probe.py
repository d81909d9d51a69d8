"""Class-balanced subsets and the logistic-regression probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from debiascl.errors import ConfigError, DataError
from debiascl.eval import (
    class_balanced_subset,
    few_shot_probe,
    few_shot_subset,
    fraction_key,
    linear_probe,
    raw_pixel_features,
    raw_pixel_probe,
    select_C,
)

IMBALANCED = np.repeat(np.arange(5), [200, 55, 21, 4, 1])


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.1, 0.05, 0.01])
def test_subset_is_stratified_with_every_class(fraction):
    rows = class_balanced_subset(IMBALANCED, fraction, seed=3)
    assert rows.dtype == np.int64
    assert np.all(np.diff(rows) > 0), "sorted and without repeats"
    assert rows.min() >= 0 and rows.max() < IMBALANCED.size
    counts = np.bincount(IMBALANCED[rows], minlength=5)
    for c, n_c in enumerate(np.bincount(IMBALANCED)):
        expected = min(n_c, max(1, math.floor(fraction * n_c + 0.5)))
        assert counts[c] == expected, (c, counts[c], expected)


def test_subset_on_balanced_labels_has_equal_counts():
    labels = np.tile(np.arange(10), 600)
    rows = class_balanced_subset(torch.tensor(labels), 0.01, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[rows]), np.full(10, 6))


def test_subset_seeds_are_reproducible_and_differ():
    a = class_balanced_subset(IMBALANCED, 0.1, seed=1)
    b = class_balanced_subset(IMBALANCED, 0.1, seed=1)
    c = class_balanced_subset(IMBALANCED, 0.1, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(class_balanced_subset(IMBALANCED, 1.0), np.arange(281))


def test_subset_rejects_bad_fractions():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            class_balanced_subset(IMBALANCED, bad)


def test_few_shot_subset_counts():
    rows = few_shot_subset(IMBALANCED, 5, seed=0)
    np.testing.assert_array_equal(np.bincount(IMBALANCED[rows]), [5, 5, 5, 4, 1])
    assert np.unique(rows).size == rows.size


def test_fraction_keys():
    assert [fraction_key(f) for f in (1.0, 0.1, 0.01, 0.005)] == ["100%", "10%", "1%", "0.5%"]


def separable(seed, n_train=600, n_test=300, dim=10, n_classes=3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))
    centres *= 6 / np.linalg.norm(centres, axis=1, keepdims=True)
    ytr, yte = rng.integers(0, n_classes, n_train), rng.integers(0, n_classes, n_test)
    xtr = centres[ytr] + 0.5 * rng.standard_normal((n_train, dim))
    xte = centres[yte] + 0.5 * rng.standard_normal((n_test, dim))
    return xtr, ytr, xte, yte


def test_probe_near_perfect_on_separable_data():
    xtr, ytr, xte, yte = separable(0)
    out = linear_probe(xtr, ytr, xte, yte, fractions=(1.0, 0.1, 0.01), seeds=2)
    assert set(out) == {"100%", "10%", "1%"}
    assert out["100%"]["mean"] >= 0.99
    assert out["10%"]["mean"] >= 0.97
    assert out["100%"]["n_train"] == 600
    assert len(out["100%"]["per_seed"]) == 1, "100% is the same subset for every seed"
    assert len(out["10%"]["per_seed"]) == 2
    per = np.array(out["10%"]["per_seed"])
    assert out["10%"]["std"] == pytest.approx(per.std(ddof=1))
    assert out["10%"]["mean"] == pytest.approx(per.mean())


def test_probe_near_chance_on_random_labels():
    rng = np.random.default_rng(1)
    xtr, xte = rng.standard_normal((600, 20)), rng.standard_normal((400, 20))
    ytr, yte = rng.integers(0, 4, 600), rng.integers(0, 4, 400)
    acc = linear_probe(xtr, ytr, xte, yte, fractions=(1.0,))["100%"]["mean"]
    assert 0.15 <= acc <= 0.35  # chance 0.25; binomial sd ~0.022 at 400 test rows


def test_probe_matches_plain_sklearn_with_fixed_C():
    xtr, ytr, xte, yte = separable(2, dim=30)
    xtr = xtr + np.random.default_rng(0).standard_normal(xtr.shape) * 3  # not trivially separable
    out = linear_probe(xtr, ytr, xte, yte, fractions=(0.5,), C=0.05)
    rows = class_balanced_subset(ytr, 0.5, seed=0)
    scaler = StandardScaler().fit(xtr[rows])
    clf = LogisticRegression(C=0.05, max_iter=1000).fit(scaler.transform(xtr[rows]), ytr[rows])
    assert out["50%"]["mean"] == pytest.approx(clf.score(scaler.transform(xte), yte))
    assert out["50%"]["C"] == [0.05]


def test_probe_is_invariant_to_feature_scale_and_offset():
    xtr, ytr, xte, yte = separable(3, dim=8)
    noise = np.random.default_rng(1).standard_normal
    xtr, xte = xtr + 4 * noise(xtr.shape), xte + 4 * noise(xte.shape)
    scale = np.linspace(1e-3, 1e3, 8)
    a = linear_probe(xtr, ytr, xte, yte, fractions=(1.0, 0.2), seeds=2)
    b = linear_probe(xtr * scale + 50, ytr, xte * scale + 50, yte, fractions=(1.0, 0.2), seeds=2)
    for key in a:
        np.testing.assert_allclose(a[key]["per_seed"], b[key]["per_seed"], atol=1e-9)


def test_standardisation_uses_training_statistics_only():
    # 1-D classes at -1 and +1; the test split is the same data shifted by +5. Statistics of the
    # labelled training subset leave the shift in place (everything looks like class 1), while
    # statistics taken from the test split would remove it and score ~100%.
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 400)
    x = (2.0 * y - 1 + 0.2 * rng.standard_normal(400))[:, None]
    acc = linear_probe(x, y, x + 5.0, y, fractions=(1.0,), C=1.0)["100%"]["mean"]
    assert acc == pytest.approx(np.mean(y == 1))


def test_C_choice_never_looks_at_the_test_split():
    xtr, ytr, xte, yte = separable(4, dim=40, n_train=300)
    xtr = xtr + 5 * np.random.default_rng(2).standard_normal(xtr.shape)
    a = linear_probe(xtr, ytr, xte, yte, fractions=(1.0, 0.3), seeds=2)
    shuffled = np.random.default_rng(0).permutation(yte)
    b = linear_probe(xtr, ytr, -xte, shuffled, fractions=(1.0, 0.3), seeds=2)
    for key in a:
        assert a[key]["C"] == b[key]["C"]


def reference_cv_scores(x, y, Cs, folds, seed):
    """Cold-start k-fold CV with per-fold standardisation, written independently."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {}
    for C in Cs:
        accs = []
        for fit_rows, val_rows in splitter.split(x, y):
            sc = StandardScaler().fit(x[fit_rows])
            clf = LogisticRegression(C=C, max_iter=5000, tol=1e-8)
            clf.fit(sc.transform(x[fit_rows]), y[fit_rows])
            accs.append(clf.score(sc.transform(x[val_rows]), y[val_rows]))
        scores[C] = float(np.mean(accs))
    return scores


def test_select_C_agrees_with_reference_cross_validation():
    rng = np.random.default_rng(11)
    # Weak signal in 2 of 40 dimensions: an interior C wins the CV by a clear margin.
    y = rng.integers(0, 3, 150)
    x = rng.standard_normal((150, 40))
    x[:, 0] += 1.2 * y
    x[:, 1] -= 1.2 * (y == 1)
    Cs = (1e-3, 1e-2, 1e-1, 1.0, 100.0)
    ref = reference_cv_scores(x, y, Cs, 3, seed=0)
    ranked = sorted(ref.values(), reverse=True)
    assert ranked[0] - ranked[1] > 0.02, "fixture must have a clear CV winner"
    assert select_C(x, y, Cs, folds=3, seed=0) == max(ref, key=ref.get)


def test_select_C_falls_back_for_single_samples():
    x, y = np.random.default_rng(0).standard_normal((3, 4)), np.array([0, 1, 2])
    from debiascl.eval.linear_probe import FALLBACK_C

    assert select_C(x, y) == FALLBACK_C


def test_few_shot_probe_shapes():
    xtr, ytr, xte, yte = separable(6)
    out = few_shot_probe(xtr, ytr, xte, yte, shots=(1, 5), seeds=3)
    assert set(out) == {"1-shot", "5-shot"}
    assert out["5-shot"]["n_train"] == 15 and len(out["5-shot"]["per_seed"]) == 3
    assert out["5-shot"]["mean"] >= 0.9


def test_raw_pixel_probe_on_digits():
    digits = load_digits()
    images = (digits.images * 15).astype(np.uint8)  # 0..240 as uint8, (N, 8, 8)
    feats = raw_pixel_features(images)
    assert feats.shape == (1797, 64) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, images.reshape(-1, 64) / 255.0, rtol=1e-6)
    y = digits.target
    out = raw_pixel_probe(images[:1200], y[:1200], images[1200:], y[1200:], fractions=(1.0,))
    assert out["100%"]["mean"] > 0.9


def test_bad_inputs_raise():
    xtr, ytr, xte, yte = separable(7)
    with pytest.raises(DataError, match="same width"):
        linear_probe(xtr, ytr, xte[:, :3], yte)
    with pytest.raises(DataError, match="labels must match"):
        linear_probe(xtr, ytr[:-1], xte, yte)
    with pytest.raises(DataError, match="2 classes"):
        linear_probe(xtr, np.zeros_like(ytr), xte, yte)
    with pytest.raises(DataError, match="NaN"):
        linear_probe(np.full_like(xtr, np.nan), ytr, xte, yte)
    with pytest.raises(DataError, match="integer"):
        linear_probe(xtr, ytr + 0.5, xte, yte)
    with pytest.raises(ConfigError):
        linear_probe(xtr, ytr, xte, yte, seeds=0)
