"""Fairness audit: zero-shot, few-shot probes, leakage probe, text table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference
from sklearn.metrics import roc_auc_score

from debiascl.errors import DataError
from debiascl.eval.fairness_audit import (
    audit_scores,
    few_shot_audit,
    format_audit,
    leakage_probe,
    zero_shot_audit,
)
from debiascl.fairness.metrics import choose_threshold


def _features(n, d=6, leak=2.0, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    a = rng.integers(0, 2, n)
    centers = np.random.default_rng(99).normal(size=(classes, d)) * 2  # same for every split
    x = centers[y] + rng.normal(size=(n, d))
    x[:, 0] += leak * a
    return x, y, a


def test_leakage_probe_detects_encoded_attribute_and_chance_otherwise():
    x, _, a = _features(800, leak=3.0)
    xt, _, at = _features(400, leak=3.0, seed=1)
    res = leakage_probe(x, a, xt, at)
    assert res["accuracy"] > 0.85 and res["auc"] > 0.9
    assert res["chance_accuracy"] == pytest.approx(max(at.mean(), 1 - at.mean()))
    x0, _, a0 = _features(800, leak=0.0)
    xt0, _, at0 = _features(400, leak=0.0, seed=1)
    res0 = leakage_probe(x0, a0, xt0, at0)
    assert abs(res0["auc"] - 0.5) < 0.1
    assert abs(res0["balanced_accuracy"] - 0.5) < 0.1
    json.dumps(res)


def test_leakage_probe_multivalue_missing_and_unseen():
    rng = np.random.default_rng(3)
    a = rng.choice(["A", "B", "C"], 600)
    x = rng.normal(size=(600, 4)) + (a[:, None] == np.array(["A", "B", "C", "A"])) * 2.0
    a_missing = a.astype(object)
    a_missing[:50] = None
    res = leakage_probe(x[:400], a_missing[:400], x[400:], a[400:])
    assert res["n_train"] == 350 and res["values"] == [0, 1, 2]
    assert res["auc"] > 0.8
    with pytest.raises(DataError, match="not in the probe's training split"):
        leakage_probe(x[:400], np.where(a[:400] == "C", "A", a[:400]), x[400:], a[400:])
    with pytest.raises(DataError, match="at least two"):
        leakage_probe(x[:10], ["A"] * 10, x[10:20], ["A"] * 10)
    with pytest.raises(DataError, match="one per embedding"):
        leakage_probe(x[:10], ["A"] * 9, x[10:20], ["A"] * 10)


def test_zero_shot_audit_multiclass_against_fairlearn():
    x, y, a = _features(300, d=3, leak=0.0, seed=4)
    class_emb = torch.eye(3, dtype=torch.float64)
    res = zero_shot_audit(
        x[:100], y[:100], x[100:], y[100:], {"a": a[100:]}, class_emb, logit_scale=10.0
    )
    xt = torch.as_tensor(x[100:])
    probs = (10.0 * torch.nn.functional.normalize(xt, dim=1) @ class_emb.T).softmax(1).numpy()
    top = probs.argmax(1)
    assert res["accuracy"] == pytest.approx(np.mean(top == y[100:]))
    rep = res["fairness"]
    assert rep["threshold"] == "argmax"
    dpd = np.mean(
        [
            demographic_parity_difference(
                (y[100:] == k).astype(int), (top == k).astype(int), sensitive_features=a[100:]
            )
            for k in range(3)
        ]
    )
    assert rep["attributes"]["a"]["dpd"] == pytest.approx(dpd)
    assert rep["overall"]["auc"] == pytest.approx(
        roc_auc_score(y[100:], probs, multi_class="ovr", average="macro")
    )


def test_binary_threshold_comes_from_validation_only():
    x, y, a = _features(400, d=2, leak=1.0, seed=5, classes=2)
    class_emb = torch.eye(2, dtype=torch.float64)
    res = zero_shot_audit(
        x[:200], y[:200], x[200:], y[200:], {"a": a[200:]}, class_emb, logit_scale=5.0
    )
    vp = (5.0 * torch.nn.functional.normalize(torch.as_tensor(x[:200]), dim=1)).softmax(1)
    assert res["fairness"]["threshold"] == pytest.approx(
        choose_threshold(vp[:, 1].numpy(), y[:200], "youden")
    )
    # changing the test split leaves the threshold alone
    res2 = zero_shot_audit(
        x[:200], y[:200], x[200:300], y[200:300], {"a": a[200:300]}, class_emb, logit_scale=5.0
    )
    assert res2["fairness"]["threshold"] == res["fairness"]["threshold"]


def test_audit_scores_errors():
    x, y, a = _features(100, classes=2)
    s = 1 / (1 + np.exp(-x[:, 0]))
    with pytest.raises(DataError, match="one value per sample"):
        audit_scores(s, y, s, y, {"a": a[:-1]})
    with pytest.raises(DataError, match="one each"):
        audit_scores(s[:-1], y, s, y, {"a": a})
    with pytest.raises(DataError, match="at least 2"):
        audit_scores(s, y, s, y, {"a": np.zeros(100)})


def test_few_shot_audit_seeds_and_summary():
    x, y, a = _features(600, seed=6)
    res = few_shot_audit(
        x[:300],
        y[:300],
        x[300:400],
        y[300:400],
        x[400:],
        y[400:],
        {"a": a[400:]},
        shots=(1, 5),
        seeds=3,
        bootstrap=0,
    )
    assert set(res) == {"1-shot", "5-shot"}
    five = res["5-shot"]
    assert len(five["per_seed"]) == 3
    assert [r["probe"]["n_train"] for r in five["per_seed"]] == [15, 15, 15]
    dpds = [r["attributes"]["a"]["dpd"] for r in five["per_seed"]]
    assert five["a"]["dpd"]["mean"] == pytest.approx(np.mean(dpds))
    assert five["a"]["dpd"]["std"] == pytest.approx(np.std(dpds, ddof=1))
    assert five["accuracy"]["mean"] > 0.5  # 3 well-separated classes
    assert len(set(five["accuracy"]["per_seed"])) > 1 or five["accuracy"]["std"] == 0
    text = format_audit(
        {"few_shot": res, "leakage": {"a": leakage_probe(x[:300], a[:300], x[400:], a[400:])}}
    )
    assert "few_shot 5-shot | a" in text and "Attribute leakage" in text
    json.dumps(res)


def test_format_audit_lists_warnings():
    rng = np.random.default_rng(0)
    s = rng.random(100)
    y = rng.integers(0, 2, 100)
    g = np.array(["x"] * 50 + ["y"] * 49 + ["z"])
    with pytest.warns(UserWarning):
        rep = audit_scores(s, y, s, y, {"g": g})
    text = format_audit({"zero_shot": {"fairness": rep}})
    assert "zero_shot | g" in text and "no AUC" in text
