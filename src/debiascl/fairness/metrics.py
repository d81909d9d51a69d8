"""Group-fairness metrics for scored classifiers (DESIGN 3.6).

One convention everywhere: **fairness gaps are differences, 0 = fair**, larger = less fair
(``auc_gap``, ``dpd``, ``eod``, ``ece_gap``); AUC-type values (``auc``, ``worst_group_auc``,
``es_auc``) are performances, higher = better.

Definitions, per sensitive attribute with groups g (an attribute may be the intersection of
several, see :func:`intersect`):

* ``auc``: ROC AUC on all rows; ``auc_g`` the AUC inside group g.
* ``worst_group_auc`` = min_g auc_g; ``auc_gap`` = max_g auc_g - min_g auc_g.
* ``es_auc`` = auc / (1 + sum_g |auc - auc_g|) (equity-scaled AUC, Luo et al., FairCLIP,
  CVPR 2024).
* ``dpd`` = max_g P(yhat=1 | g) - min_g P(yhat=1 | g) (demographic parity difference).
* ``eod`` = max(TPR gap, FPR gap) over groups (equalized odds difference, Hardt et al. 2016).
* ``ece_g``: expected calibration error inside g (``n_bins`` equal-width bins on [0, 1];
  only when the scores are probabilities); ``ece_gap`` = max_g - min_g.

Decisions ``yhat = score >= threshold`` use a threshold **chosen on validation data** (see
:func:`choose_threshold`) and passed in; nothing here fits a threshold on the data it scores.

Undefined quantities are reported, never silently dropped: a group without both classes has
``auc = None`` and an ``auc_undefined`` reason, is listed in ``groups_without_auc`` and raises a
:class:`FairnessWarning`; likewise a group with no positives has no TPR (no negatives: no FPR) and
is left out of that gap. (fairlearn instead counts such a rate as 0; on inputs where every group
has both classes the two agree exactly.) Declared groups with no rows are listed in
``empty_groups``.

Multi-class scores (n, C) with integer targets are evaluated one-vs-rest per class and every scalar
is macro-averaged over the classes (the output says so in ``"averaging"``); multi-label scores
(n, C) with (n, C) binary targets are evaluated per label the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from debiascl.errors import DataError
from debiascl.missing import as_object_column, is_missing_marker

CONVENTION = (
    "gaps are differences (0 = fair, larger = less fair): auc_gap, dpd, eod, ece_gap; "
    "auc, worst_group_auc and es_auc are performances (higher = better)"
)
MISSING = -1  # attribute code of a sample whose attribute is unknown
SCALARS = ("auc", "worst_group_auc", "auc_gap", "es_auc", "dpd", "eod", "tpr_gap", "fpr_gap")


class FairnessWarning(UserWarning):
    """A fairness quantity is undefined for some group (reported in the output too)."""


# ----------------------------------------------------------------------------- basic metrics
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
        ys = _task_targets(s, y)
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


# ----------------------------------------------------------------------------- groups
def intersect(attributes: Mapping[str, Sequence], names: Sequence[str]) -> np.ndarray:
    """Intersectional group label per row, e.g. ``"sex=F & race=Black"``.

    ``attributes`` maps names to (n,) values; a row whose value is missing (see
    :func:`is_missing`) in any component is missing (None) in the intersection.
    """
    for name in names:
        if name not in attributes:
            raise DataError(
                f"attribute {name!r} is not in the data (have {sorted(attributes)}); "
                "add the column or remove it from the intersection"
            )
    cols = [as_object_column(attributes[name]) for name in names]
    n = len(cols[0])
    out = np.empty(n, dtype=object)
    for i in range(n):
        parts = []
        for name, col in zip(names, cols, strict=True):
            if is_missing(col[i]):
                parts = None
                break
            parts.append(f"{name}={col[i]}")
        out[i] = None if parts is None else " & ".join(parts)
    return out


def is_missing(v: object) -> bool:
    """A missing attribute value: any numpy/pandas marker (None, NaN, pd.NA, pd.NaT, NaT, masked;
    :func:`debiascl.missing.is_missing_marker`), the code ``-1`` or the empty string."""
    if is_missing_marker(v):
        return True
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v == MISSING:
        return True
    return isinstance(v, str) and v == ""


def _key(v: object) -> object:
    """JSON-friendly group key (numpy scalars -> Python)."""
    return v.item() if isinstance(v, np.generic) else v


# ----------------------------------------------------------------------------- one binary task
@dataclass
class _Task:
    scores: np.ndarray  # (n,)
    targets: np.ndarray  # (n,) in {0, 1}
    groups: np.ndarray  # (n,) object, no missing
    threshold: float | None  # None: decisions given in `pred`
    pred: np.ndarray  # (n,) bool
    probabilistic: bool


def _binary_group_metrics(
    task: _Task, order: Sequence[object], n_bins: int
) -> tuple[dict, dict[str, list]]:
    """Per-group rows and the scalar summary of one binary task (no warnings; see caller)."""
    s, y, g, pred = task.scores, task.targets.astype(bool), task.groups, task.pred
    overall = roc_auc(s, y)
    rows: dict = {}
    undefined: dict[str, list] = {"auc": [], "tpr": [], "fpr": [], "empty": []}
    for key in order:
        m = g == key
        n = int(m.sum())
        if n == 0:
            undefined["empty"].append(_key(key))
            rows[str(_key(key))] = {"n": 0, "auc": None, "auc_undefined": "empty group"}
            continue
        yg, pg = y[m], pred[m]
        n_pos = int(yg.sum())
        auc_g = roc_auc(s[m], yg)
        row: dict = {
            "n": n,
            "n_pos": n_pos,
            "auc": auc_g,
            "positive_rate": float(pg.mean()),
            "tpr": float(pg[yg].mean()) if n_pos else None,
            "fpr": float(pg[~yg].mean()) if n - n_pos else None,
        }
        if auc_g is None:
            row["auc_undefined"] = "only one class in group"
            undefined["auc"].append(_key(key))
        if row["tpr"] is None:
            undefined["tpr"].append(_key(key))
        if row["fpr"] is None:
            undefined["fpr"].append(_key(key))
        if task.probabilistic:
            row["ece"] = expected_calibration_error(s[m], yg, n_bins)
        rows[str(_key(key))] = row
    present = [r for r in rows.values() if r["n"] > 0]
    aucs = [r["auc"] for r in present if r["auc"] is not None]
    tprs = [r["tpr"] for r in present if r["tpr"] is not None]
    fprs = [r["fpr"] for r in present if r["fpr"] is not None]
    rates = [r["positive_rate"] for r in present]
    tpr_gap = _spread(tprs)
    fpr_gap = _spread(fprs)
    summary = {
        "auc": overall,
        "worst_group_auc": min(aucs) if aucs else None,
        "auc_gap": _spread(aucs),
        "es_auc": (overall / (1.0 + sum(abs(overall - a) for a in aucs)))
        if overall is not None and aucs
        else None,
        "dpd": _spread(rates),
        "tpr_gap": tpr_gap,
        "fpr_gap": fpr_gap,
        "eod": None if tpr_gap is None and fpr_gap is None else max(tpr_gap or 0.0, fpr_gap or 0.0),
    }
    if task.probabilistic:
        eces = [r["ece"] for r in present if r.get("ece") is not None]
        summary["ece"] = expected_calibration_error(s, y, n_bins)
        summary["ece_gap"] = _spread(eces)
        summary["max_group_ece"] = max(eces) if eces else None
    return {"summary": summary, "groups": rows}, undefined


def _spread(values: Sequence[float]) -> float | None:
    return float(max(values) - min(values)) if len(values) >= 1 else None


# ----------------------------------------------------------------------------- public report
def _task_targets(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
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


def _targets_array(targets: Any) -> np.ndarray:
    """Targets as an int64 array with every missing marker as -1 (ignored)."""
    y = np.ma.filled(targets, -1) if np.ma.isMaskedArray(targets) else targets
    if hasattr(y, "to_numpy"):  # pandas: nullable Int64/boolean columns hold pd.NA
        y = y.to_numpy(dtype=object)
    y = np.asarray(y)
    if y.dtype == object or np.issubdtype(y.dtype, np.floating):
        flat = as_object_column(y.reshape(-1))
        flat = np.array([-1 if v is None else v for v in flat], dtype=np.float64)
        if not np.all(flat == np.round(flat)):
            raise DataError("targets must be integer class ids or {0, 1} (missing = ignored)")
        y = flat.astype(np.int64).reshape(y.shape)
    return y


def _as_group_array(values: Sequence, name: str, n: int) -> np.ndarray:
    arr = as_object_column(values)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"attribute {name!r} has {len(arr)} values but there are {n} scores; "
            "give one attribute value per scored sample"
        )
    return arr


def fairness_report(
    scores: np.ndarray,
    targets: np.ndarray,
    attributes: Mapping[str, Sequence],
    threshold: float | Sequence[float] | str,
    *,
    intersections: Sequence[Sequence[str]] = (),
    known_values: Mapping[str, Sequence] | None = None,
    class_names: Sequence[str] | None = None,
    n_bins: int = 10,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    min_groups: int = 2,
) -> dict:
    """Full fairness report of scored predictions, JSON-serialisable.

    Args:
        scores: (n,) binary scores, or (n, C) per-class / per-label scores. Probabilities in
            [0, 1] also get calibration errors.
        targets: (n,) {0, 1} for binary, (n,) class ids for (n, C) multi-class, (n, C) {0, 1}
            for multi-label. Negative or missing targets (None, NaN, pd.NA, masked) are ignored
            (e.g. uncertain CXR labels).
        attributes: name -> (n,) group value per sample; missing values (None, NaN, pd.NA,
            pd.NaT, masked entries, -1, "") leave that sample out of that attribute's groups
            (counted in ``n_missing``).
        threshold: a float (binary), C floats (per class / label) chosen on validation data
            with :func:`choose_threshold`, or ``"argmax"`` (multi-class: yhat_c = argmax == c).
        intersections: tuples of attribute names whose combination is also audited.
        known_values: name -> the values seen when the model was trained/validated; a value
            outside them at evaluation is an error (a coding mismatch). Groups listed here but
            absent in the data are reported as empty.
        class_names: names of the C classes/labels.
        n_bins: bins of the calibration error.
        bootstrap: number of seeded bootstrap resamples for confidence intervals (0: none).
            Resampling is stratified by group so small subgroups stay present.
        confidence: level of the percentile intervals.
        seed: bootstrap seed.
        min_groups: fewer non-empty groups than this in an attribute is an error.

    Returns:
        ``{"convention", "averaging", "n", "threshold", "overall", "attributes", "warnings"}``;
        ``attributes[name]`` holds the macro-averaged scalars, ``"groups"`` (binary) or
        ``"per_class"`` (multi-class/label) details, ``groups_without_auc``, ``empty_groups``,
        ``n_missing`` and, with bootstrap, ``"ci"``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = _targets_array(targets)
    n = len(s)
    if s.ndim not in (1, 2) or len(y) != n:
        raise DataError(
            f"scores ({s.shape}) and targets ({y.shape}) must have the same number of rows; "
            "pass one score row per target"
        )
    if not attributes and not intersections:
        raise DataError("no sensitive attribute given; pass at least one attribute column")
    if not np.all(np.isfinite(s)):
        raise DataError("scores contain NaN or infinite values; check the model outputs")
    probabilistic = bool(n and s.min() >= 0.0 and s.max() <= 1.0)

    # tasks: list of (name, scores, targets, pred)
    if s.ndim == 1:
        if isinstance(threshold, str):
            raise DataError(
                "threshold='argmax' needs (n, C) multi-class scores; give a float threshold "
                "chosen on validation data"
            )
        yy = np.where(y < 0, -1, (y > 0).astype(np.int64))
        tasks = [("positive", s, yy, s >= float(threshold))]
        averaging = "binary"
        thr_out: object = float(threshold)
    else:
        c = s.shape[1]
        names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
        if len(names) != c:
            raise DataError(f"{len(names)} class names for {c} score columns; give one per column")
        ys = _task_targets(s, y)
        if isinstance(threshold, str):
            if threshold != "argmax" or y.ndim == 2:
                raise DataError(
                    "threshold must be a float, one float per class, or 'argmax' (multi-class)"
                )
            top = s.argmax(1)
            preds = [top == k for k in range(c)]
            thr_out = "argmax"
        else:
            thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (c,))
            preds = [s[:, k] >= thr[k] for k in range(c)]
            thr_out = [float(t) for t in thr]
        tasks = [(names[k], s[:, k], ys[:, k], preds[k]) for k in range(c)]
        averaging = (
            "multi-label: per label, macro average over labels"
            if y.ndim == 2
            else "multi-class: one-vs-rest per class, macro average over classes"
        )

    # attribute columns (with intersections)
    cols: dict[str, np.ndarray] = {}
    for name, values in attributes.items():
        cols[name] = _as_group_array(values, name, n)
    for combo in intersections:
        cols[" & ".join(combo)] = intersect(cols, list(combo))

    out: dict = {
        "convention": CONVENTION,
        "averaging": averaging,
        "n": n,
        "threshold": thr_out,
        "threshold_source": "given by the caller (choose it on validation data, not test)",
        "overall": {},
        "attributes": {},
        "warnings": [],
    }
    overall_auc = [roc_auc(t_s[t_y >= 0], t_y[t_y >= 0]) for _, t_s, t_y, _ in tasks]
    out["overall"]["auc"] = _mean([a for a in overall_auc if a is not None])
    if len(tasks) > 1:
        out["overall"]["per_class_auc"] = {
            name: a for (name, *_), a in zip(tasks, overall_auc, strict=True)
        }
    rng = np.random.default_rng(seed)
    for name, col in cols.items():
        missing = np.array([is_missing(v) for v in col], dtype=bool)
        present = col[~missing]
        seen = sorted({_key(v) for v in present}, key=str)
        known = None
        if known_values is not None and name in known_values:
            known = [_key(v) for v in known_values[name]]
            unseen = [v for v in seen if v not in known]
            if unseen:
                raise DataError(
                    f"attribute {name!r} has values {unseen} at evaluation that were not seen "
                    f"in training/validation ({known}); fix the coding of the column"
                )
        order = known if known is not None else seen
        if len(seen) < min_groups:
            raise DataError(
                f"attribute {name!r} has {len(seen)} group(s) with data ({seen}); a fairness "
                f"audit needs at least {min_groups}; use a test set that contains every group"
            )
        entry = _attribute_entry(
            tasks, col, missing, order, probabilistic, n_bins, bootstrap, confidence, rng
        )
        entry["n_missing"] = int(missing.sum())
        for kind, keys in (("groups_without_auc", "auc"), ("empty_groups", "empty")):
            if entry[kind]:
                msg = (
                    f"attribute {name!r}: groups {entry[kind]} have no AUC "
                    f"({'only one class' if keys == 'auc' else 'no samples'}); "
                    "they are left out of the AUC gap, worst-group AUC and ES-AUC"
                )
                out["warnings"].append(msg)
                warnings.warn(msg, FairnessWarning, stacklevel=2)
        out["attributes"][name] = entry
    return out


def _attribute_entry(
    tasks: list,
    col: np.ndarray,
    missing: np.ndarray,
    order: Sequence[object],
    probabilistic: bool,
    n_bins: int,
    bootstrap: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict:
    per_task: dict = {}
    no_auc: set = set()
    empty: set = set()
    summaries = []
    for tname, t_s, t_y, t_pred in tasks:
        keep = (~missing) & (t_y >= 0)
        task = _Task(t_s[keep], t_y[keep], col[keep], None, t_pred[keep], probabilistic)
        res, undefined = _binary_group_metrics(task, order, n_bins)
        no_auc.update(undefined["auc"])
        empty.update(undefined["empty"])
        res["undefined_tpr"] = undefined["tpr"]
        res["undefined_fpr"] = undefined["fpr"]
        per_task[tname] = res
        summaries.append(res["summary"])
        if bootstrap:
            res["ci"] = _bootstrap(task, order, n_bins, bootstrap, confidence, rng)
    entry: dict = {k: _mean([s[k] for s in summaries if s.get(k) is not None]) for k in SCALARS}
    if probabilistic:
        for k in ("ece", "ece_gap", "max_group_ece"):
            entry[k] = _mean([s[k] for s in summaries if s.get(k) is not None])
    if len(tasks) == 1:
        only = next(iter(per_task.values()))
        entry["groups"] = only["groups"]
        entry["undefined_tpr"] = only["undefined_tpr"]
        entry["undefined_fpr"] = only["undefined_fpr"]
        if bootstrap:
            entry["ci"] = only["ci"]
    else:
        entry["per_class"] = per_task
        if bootstrap:
            entry["ci"] = {
                k: [
                    _mean([t["ci"][k][0] for t in per_task.values() if t["ci"].get(k)]),
                    _mean([t["ci"][k][1] for t in per_task.values() if t["ci"].get(k)]),
                ]
                for k in SCALARS
            }
            entry["ci_note"] = "macro average of the per-class interval ends"
    entry["groups_without_auc"] = sorted(no_auc, key=str)
    entry["empty_groups"] = sorted(empty, key=str)
    return entry


def _bootstrap(
    task: _Task,
    order: Sequence[object],
    n_bins: int,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, list[float] | None]:
    """Percentile intervals of the scalar metrics, resampling rows within each group."""
    index_by_group = [np.flatnonzero(task.groups == key) for key in order]
    index_by_group = [ix for ix in index_by_group if ix.size]
    draws: dict[str, list[float]] = {k: [] for k in SCALARS}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(ix, size=ix.size, replace=True) for ix in index_by_group])
        sub = _Task(
            task.scores[idx], task.targets[idx], task.groups[idx], None, task.pred[idx], False
        )
        res, _ = _binary_group_metrics(sub, order, n_bins)
        for k in SCALARS:
            v = res["summary"][k]
            if v is not None:
                draws[k].append(v)
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    return {
        k: [float(np.quantile(v, lo)), float(np.quantile(v, hi))] if v else None
        for k, v in draws.items()
    }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None
