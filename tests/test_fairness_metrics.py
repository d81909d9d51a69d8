"""Fairness metrics vs fairlearn / scikit-learn and plain float64 references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import roc_auc_score

from debiascl.errors import DataError
from debiascl.fairness.metrics import (
    FairnessWarning,
    choose_threshold,
    expected_calibration_error,
    fairness_report,
    intersect,
    roc_auc,
)


def _data(n: int, groups: int, seed: int):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(1.5 * y - 0.75 + 0.4 * g + rng.normal(size=n))))
    return s, y, g


def _ref_group_auc(s, y, g):
    return {k: roc_auc_score(y[g == k], s[g == k]) for k in np.unique(g)}


@pytest.mark.parametrize("groups", [2, 3])
def test_matches_fairlearn_and_sklearn(groups):
    s, y, g = _data(400, groups, seed=groups)
    thr = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", FairnessWarning)
        rep = fairness_report(s, y, {"g": g}, thr)
    a = rep["attributes"]["g"]
    pred = (s >= thr).astype(int)
    assert a["dpd"] == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=g))
    assert a["eod"] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=g))
    assert rep["overall"]["auc"] == pytest.approx(roc_auc_score(y, s))
    ref = _ref_group_auc(s, y, g)
    got = {int(k): v["auc"] for k, v in a["groups"].items()}
    assert got == pytest.approx({int(k): v for k, v in ref.items()})
    assert a["worst_group_auc"] == pytest.approx(min(ref.values()))
    assert a["auc_gap"] == pytest.approx(max(ref.values()) - min(ref.values()))
    overall = roc_auc_score(y, s)
    es = overall / (1 + sum(abs(overall - v) for v in ref.values()))
    assert a["es_auc"] == pytest.approx(es)


def test_intersectional_matches_fairlearn_on_combined_feature():
    rng = np.random.default_rng(5)
    n = 600
    sex = rng.choice(["F", "M"], n)
    race = rng.choice(["A", "B", "W"], n)
    y = rng.integers(0, 2, n)
    s = rng.random(n) * 0.6 + 0.4 * y
    rep = fairness_report(s, y, {"sex": sex, "race": race}, 0.5, intersections=[("sex", "race")])
    inter = rep["attributes"]["sex & race"]
    assert len(inter["groups"]) == 6
    combined = np.array([f"{a}|{b}" for a, b in zip(sex, race, strict=True)])
    pred = (s >= 0.5).astype(int)
    assert inter["dpd"] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=combined)
    )
    assert inter["eod"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=combined)
    )
    # fairlearn also accepts several sensitive columns and intersects them itself
    import pandas as pd

    sf = pd.DataFrame({"sex": sex, "race": race})
    assert inter["eod"] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=sf))
    assert inter["groups"]["sex=F & race=B"]["auc"] == pytest.approx(
        roc_auc_score(y[combined == "F|B"], s[combined == "F|B"])
    )


def test_intersect_missing_component_is_missing():
    out = intersect({"a": [1, -1, 0], "b": ["x", "y", None]}, ["a", "b"])
    assert list(out) == ["a=1 & b=x", None, None]


def test_roc_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, 200).astype(float)  # many ties
    y = rng.integers(0, 2, 200)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert roc_auc(s, np.ones(200)) is None


def test_ece_against_plain_loop():
    rng = np.random.default_rng(1)
    p = rng.random(300)
    y = (rng.random(300) < p**2).astype(float)
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        m = (p >= lo) & ((p < hi) if b < 9 else (p <= hi))
        if m.any():
            total += m.sum() / 300 * abs(y[m].mean() - p[m].mean())
    assert expected_calibration_error(p, y, 10) == pytest.approx(total)


def test_group_with_one_class_is_reported_not_dropped():
    rng = np.random.default_rng(2)
    g = np.array([0] * 50 + [1] * 50 + [2] * 10)
    y = rng.integers(0, 2, 110)
    y[g == 2] = 1  # group 2: only positives -> no AUC, no FPR
    s = rng.random(110)
    with pytest.warns(FairnessWarning, match="no AUC"):
        rep = fairness_report(s, y, {"g": g}, 0.5)
    a = rep["attributes"]["g"]
    assert a["groups"]["2"]["auc"] is None
    assert a["groups"]["2"]["auc_undefined"] == "only one class in group"
    assert a["groups_without_auc"] == [2]
    assert a["undefined_fpr"] == [2]
    assert any("no AUC" in w for w in rep["warnings"])
    ref = _ref_group_auc(s[g < 2], y[g < 2], g[g < 2])
    assert a["auc_gap"] == pytest.approx(abs(ref[0] - ref[1]))
    # DPD still uses every group; EOD's FPR gap skips group 2 (fairlearn would count FPR=0)
    pred = s >= 0.5
    rates = [pred[g == k].mean() for k in range(3)]
    assert a["dpd"] == pytest.approx(max(rates) - min(rates))
    tpr = [pred[(g == k) & (y == 1)].mean() for k in range(3)]
    fpr = [pred[(g == k) & (y == 0)].mean() for k in range(2)]
    assert a["eod"] == pytest.approx(max(max(tpr) - min(tpr), max(fpr) - min(fpr)))


def test_group_of_size_one_and_empty_declared_group():
    rng = np.random.default_rng(3)
    g = np.array(["a"] * 40 + ["b"] * 40 + ["c"])
    y = rng.integers(0, 2, 81)
    s = rng.random(81)
    with pytest.warns(FairnessWarning):
        rep = fairness_report(s, y, {"g": g}, 0.5, known_values={"g": ["a", "b", "c", "d"]})
    a = rep["attributes"]["g"]
    assert a["groups"]["c"]["n"] == 1 and a["groups"]["c"]["auc"] is None
    assert a["groups"]["d"]["n"] == 0
    assert a["empty_groups"] == ["d"]
    assert "c" in a["groups_without_auc"]
    pred = (s >= 0.5).astype(int)
    assert a["dpd"] == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=g))


def test_missing_attribute_rows_are_counted_and_excluded():
    s, y, g = _data(300, 2, seed=9)
    g = g.astype(object)
    g[:30] = None
    rep = fairness_report(s, y, {"g": g}, 0.5)
    a = rep["attributes"]["g"]
    assert a["n_missing"] == 30
    pred = (s[30:] >= 0.5).astype(int)
    assert a["dpd"] == pytest.approx(
        demographic_parity_difference(y[30:], pred, sensitive_features=list(g[30:]))
    )


def test_multiclass_one_vs_rest_macro():
    rng = np.random.default_rng(4)
    n, c = 500, 3
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    g = rng.integers(0, 2, n)
    rep = fairness_report(p, y, {"g": g}, "argmax", class_names=["x", "y", "z"])
    assert "one-vs-rest" in rep["averaging"] and "macro" in rep["averaging"]
    assert rep["overall"]["auc"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    a = rep["attributes"]["g"]
    top = p.argmax(1)
    dpds = [
        demographic_parity_difference(
            (y == k).astype(int), (top == k).astype(int), sensitive_features=g
        )
        for k in range(c)
    ]
    assert a["dpd"] == pytest.approx(np.mean(dpds))
    assert set(a["per_class"]) == {"x", "y", "z"}
    # per-class thresholds
    rep2 = fairness_report(p, y, {"g": g}, [0.3, 0.4, 0.5])
    eods = [
        equalized_odds_difference(
            (y == k).astype(int), (p[:, k] >= t).astype(int), sensitive_features=g
        )
        for k, t in enumerate([0.3, 0.4, 0.5])
    ]
    assert rep2["attributes"]["g"]["eod"] == pytest.approx(np.mean(eods))


def test_multilabel_ignores_uncertain_targets():
    rng = np.random.default_rng(6)
    n = 300
    y = rng.integers(-1, 2, (n, 2))
    s = rng.random((n, 2))
    g = rng.integers(0, 2, n)
    rep = fairness_report(s, y, {"g": g}, 0.5)
    assert rep["averaging"].startswith("multi-label")
    keep = y[:, 1] >= 0
    assert rep["overall"]["per_class_auc"]["1"] == pytest.approx(
        roc_auc_score(y[keep, 1], s[keep, 1])
    )


def test_bootstrap_is_seeded_and_brackets_estimate():
    s, y, g = _data(300, 2, seed=11)
    r1 = fairness_report(s, y, {"g": g}, 0.5, bootstrap=100, seed=3)
    r2 = fairness_report(s, y, {"g": g}, 0.5, bootstrap=100, seed=3)
    r3 = fairness_report(s, y, {"g": g}, 0.5, bootstrap=100, seed=4)
    ci = r1["attributes"]["g"]["ci"]
    assert ci == r2["attributes"]["g"]["ci"]
    assert ci != r3["attributes"]["g"]["ci"]
    lo, hi = ci["auc"]
    assert lo < r1["attributes"]["g"]["auc"] < hi
    assert ci["dpd"][0] <= ci["dpd"][1]


def test_threshold_is_chosen_on_validation_only():
    rng = np.random.default_rng(7)
    yv = rng.integers(0, 2, 200)
    sv = rng.random(200) + yv
    t = choose_threshold(sv, yv, "youden")
    # brute-force Youden on the validation data
    best = max(
        np.unique(sv),
        key=lambda c: (
            ((sv >= c) & (yv == 1)).mean() / yv.mean()
            - ((sv >= c) & (yv == 0)).mean() / (1 - yv.mean())
        ),
    )
    assert t == pytest.approx(best)
    rep = fairness_report(sv, yv, {"g": rng.integers(0, 2, 200)}, t)
    assert rep["threshold"] == t
    ts = choose_threshold(np.stack([sv, -sv], 1), yv)
    assert len(ts) == 2


def test_json_serialisable():
    import json

    s, y, g = _data(100, 2, seed=1)
    json.dumps(fairness_report(s, y, {"g": g}, 0.5, bootstrap=5))


# ----------------------------------------------------------------------------- bad input
def test_mismatched_lengths():
    s, y, g = _data(50, 2, seed=0)
    with pytest.raises(DataError, match="one attribute value per scored sample"):
        fairness_report(s, y, {"g": g[:-1]}, 0.5)
    with pytest.raises(DataError, match="same number of rows"):
        fairness_report(s, y[:-1], {"g": g}, 0.5)


def test_fewer_than_two_groups():
    s, y, _ = _data(50, 2, seed=0)
    with pytest.raises(DataError, match="at least 2"):
        fairness_report(s, y, {"g": np.zeros(50)}, 0.5)


def test_unseen_attribute_value():
    s, y, g = _data(50, 2, seed=0)
    with pytest.raises(DataError, match="not seen"):
        fairness_report(s, y, {"g": g + 1}, 0.5, known_values={"g": [0, 1]})


def test_missing_intersection_attribute():
    s, y, g = _data(50, 2, seed=0)
    with pytest.raises(DataError, match="not in the data"):
        fairness_report(s, y, {"g": g}, 0.5, intersections=[("g", "race")])


def test_argmax_needs_multiclass():
    s, y, g = _data(50, 2, seed=0)
    with pytest.raises(DataError, match="argmax"):
        fairness_report(s, y, {"g": g}, "argmax")


def test_per_group_auc_intervals_match_a_stratified_bootstrap_reference():
    """Each group row carries ``auc_ci``: the percentile interval of that group's AUC over the
    same stratified resamples, recomputed here with sklearn in a plain loop."""
    s, y, g = _data(240, 3, seed=5)
    n_boot, seed = 60, 9
    rep = fairness_report(s, y, {"g": g}, 0.5, bootstrap=n_boot, seed=seed)
    rows = rep["attributes"]["g"]["groups"]
    rng = np.random.default_rng(seed)
    order = sorted(set(g.tolist()))
    index = [np.flatnonzero(g == k) for k in order]
    draws: dict[str, list[float]] = {str(k): [] for k in order}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(ix, size=ix.size, replace=True) for ix in index])
        for k in order:
            m = g[idx] == k
            yy, ss = y[idx][m], s[idx][m]
            if 0 < yy.sum() < len(yy):
                draws[str(k)].append(roc_auc_score(yy, ss))
    for k in order:
        ref = np.quantile(draws[str(k)], [0.025, 0.975])
        assert rows[str(k)]["auc_ci"] == pytest.approx(ref.tolist(), abs=1e-12)
        lo, hi = rows[str(k)]["auc_ci"]
        assert lo < rows[str(k)]["auc"] < hi
    # without bootstrap there is no interval to report
    assert "auc_ci" not in fairness_report(s, y, {"g": g}, 0.5)["attributes"]["g"]["groups"]["0"]
