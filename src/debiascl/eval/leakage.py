"""Attribute leakage: how well a fresh linear probe recovers a sensitive attribute from frozen
embeddings (part of the fairness audit, :mod:`debiascl.eval.fairness_audit`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from debiascl.errors import DataError
from debiascl.eval._arrays import ArrayLike, as_numpy
from debiascl.fairness.metrics import MISSING, is_missing
from debiascl.missing import as_object_column
from debiascl.numerics import argmax_share


def leakage_probe(
    train_x: ArrayLike,
    train_attr: ArrayLike | Sequence,
    test_x: ArrayLike,
    test_attr: ArrayLike | Sequence,
    *,
    C: float = 1.0,
    max_train: int | None = 20000,
    seed: int = 0,
) -> dict[str, Any]:
    """How well a fresh linear classifier recovers a sensitive attribute from frozen embeddings.

    Fits standardisation + L2 logistic regression on (up to ``max_train`` random rows of) the
    training split, evaluates on the held-out split. Rows with a missing attribute are left out.

    Returns:
        ``{"accuracy", "balanced_accuracy", "auc", "chance_accuracy", "chance_balanced_accuracy",
        "chance_auc", "n_train", "n_test", "values"}``; AUC is one-vs-rest macro for more than two
        values; chance accuracy is the test share of the majority value (always predicting it).
    """
    tx = as_numpy(train_x, "train_x").astype(np.float64)
    sx = as_numpy(test_x, "test_x").astype(np.float64)
    ta = _codes(train_attr, len(tx), "train")
    sa_raw = _codes(test_attr, len(sx), "test")
    keep_t = ta != MISSING
    keep_s = sa_raw != MISSING
    tx, ta = tx[keep_t], ta[keep_t]
    sx, sa = sx[keep_s], sa_raw[keep_s]
    values = np.unique(ta)
    if values.size < 2:
        raise DataError(
            "the leakage probe needs at least two attribute values in the training split; "
            "use a split that contains every group"
        )
    unseen = sorted(set(np.unique(sa).tolist()) - set(values.tolist()))
    if unseen:
        raise DataError(
            f"attribute values {unseen} occur in the held-out split but not in the probe's "
            "training split; use splits with the same groups"
        )
    if max_train is not None and len(tx) > max_train:
        rows = np.random.default_rng(seed).choice(len(tx), max_train, replace=False)
        tx, ta = tx[rows], ta[rows]
    scaler = StandardScaler().fit(tx)
    clf = LogisticRegression(C=C, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(tx), ta)
    p = clf.predict_proba(scaler.transform(sx))
    # tied top probabilities (a collapsed embedding) count 1/m each: the rule of eval.ties
    share = argmax_share(torch.from_numpy(p)).numpy()
    hit = share[np.arange(len(sa)), np.searchsorted(clf.classes_, sa)]
    if values.size == 2:
        auc = roc_auc_score(sa == clf.classes_[1], p[:, 1]) if np.unique(sa).size == 2 else None
    else:
        auc = (
            roc_auc_score(sa, p, multi_class="ovr", average="macro", labels=clf.classes_)
            if np.unique(sa).size == values.size
            else None
        )
    _, counts = np.unique(sa, return_counts=True)
    return {
        "accuracy": float(hit.mean()),
        "balanced_accuracy": float(np.mean([hit[sa == v].mean() for v in np.unique(sa)])),
        "auc": None if auc is None else float(auc),
        "chance_accuracy": float(counts.max() / counts.sum()),
        "chance_balanced_accuracy": float(1.0 / values.size),
        "chance_auc": 0.5,
        "n_train": len(tx),
        "n_test": len(sx),
        "values": [v.item() if isinstance(v, np.generic) else v for v in values],
    }


def _codes(values: ArrayLike | Sequence, n: int, split: str) -> np.ndarray:
    """Integer codes of attribute values (strings get a sorted vocabulary; missing -> -1)."""
    if hasattr(values, "cpu"):
        arr = values.cpu().numpy()
    elif isinstance(values, np.ndarray) and not np.ma.isMaskedArray(values):
        arr = values
    else:  # lists, pandas columns and masked arrays: every missing marker becomes None
        arr = as_object_column(values)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"the {split} split has {len(arr)} attribute values for {n} embeddings; "
            "give one per embedding"
        )
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    missing = np.array([is_missing(v) for v in arr])
    keys = sorted({str(v) for v in arr[~missing]})
    table = {k: i for i, k in enumerate(keys)}
    return np.array([MISSING if m else table[str(v)] for v, m in zip(arr, missing, strict=True)])
