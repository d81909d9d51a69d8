"""Score-level metrics of one binary task: ROC AUC, calibration error, validation thresholds.

Used per group by :func:`debiascl.fairness.metrics.fairness_report`; importable from
:mod:`debiascl.fairness.metrics` too.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from debiascl.errors import DataError


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """ROC AUC of (n,) ``scores`` for binary (n,) ``targets`` in {0, 1}; None without both classes.

    Mann-Whitney form with mid-ranks for ties (equal to ``sklearn.metrics.roc_auc_score``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    n_pos = int(targets.sum())
    n_neg = targets.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = 10
) -> float | None:
    """ECE = sum_b (n_b / n) |mean(y in b) - mean(p in b)| over ``n_bins`` equal-width bins.

    ``probs`` (n,) in [0, 1]; bin b holds p in [b/n_bins, (b+1)/n_bins) (the last bin includes 1).
    Returns None for an empty input.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if probs.size == 0:
        return None
    bins = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=targets - probs, minlength=n_bins)
    return float(np.abs(gap).sum() / probs.size) if count.sum() else None


def choose_threshold(
    val_scores: np.ndarray, val_targets: np.ndarray, rule: str = "youden"
) -> float | list[float]:
    """Decision threshold(s) chosen on **validation** data.

    Args:
        val_scores: (n,) binary scores or (n, C) one-vs-rest / multi-label scores.
        val_targets: (n,) {0,1} or class ids for (n, C) scores, or (n, C) binary labels;
            negative targets are ignored.
        rule: ``"youden"`` (max TPR - FPR), ``"f1"`` (max F1) or ``"prevalence"`` (the score
            quantile that predicts as many positives as the validation prevalence).

    Returns:
        One float for binary scores, a list of C floats otherwise.
    """
    s = np.asarray(val_scores, dtype=np.float64)
    y = np.asarray(val_targets)
    if s.ndim == 2:
        ys = task_targets(s, y)
        return [float(choose_threshold(s[:, c], ys[:, c], rule)) for c in range(s.shape[1])]
    keep = y >= 0
    s, y = s[keep], y[keep].astype(bool)
    if s.size == 0 or y.all() or not y.any():
        raise DataError(
            "cannot choose a threshold: the validation split needs both positive and negative "
            "samples for every task; use a larger validation split"
        )
    if rule == "prevalence":
        return float(np.quantile(s, 1.0 - y.mean()))
    cand = np.unique(s)
    pred = s[None, :] >= cand[:, None]  # (T, n)
    tp = (pred & y).sum(1)
    fp = (pred & ~y).sum(1)
    if rule == "youden":
        value = tp / y.sum() - fp / (~y).sum()
    elif rule == "f1":
        value = 2 * tp / np.maximum(2 * tp + fp + (y.sum() - tp), 1)
    else:
        raise DataError(f"unknown threshold rule {rule!r}; use 'youden', 'f1' or 'prevalence'")
    return float(cand[int(np.argmax(value))])


def task_targets(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(n, C) per-task binary targets (-1 = ignore) for (n, C) scores."""
    if targets.ndim == 2:
        if targets.shape != scores.shape:
            raise DataError(
                f"multi-label targets have shape {targets.shape} but scores {scores.shape}; "
                "give one target column per score column"
            )
        return np.where(targets < 0, -1, (targets > 0).astype(np.int64))
    c = scores.shape[1]
    if targets.size and (targets.max() >= c):
        raise DataError(
            f"class targets go up to {int(targets.max())} but scores have {c} columns; "
            "give one score column per class"
        )
    onehot = (targets[:, None] == np.arange(c)[None, :]).astype(np.int64)
    return np.where(targets[:, None] < 0, -1, onehot)
