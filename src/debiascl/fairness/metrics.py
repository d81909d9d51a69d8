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

import numpy as np
import torch

from debiascl.errors import DataError
from debiascl.fairness.group_metrics import (
    SCALARS,
    GroupTask,
    binary_group_metrics,
    bootstrap_intervals,
    mean_or_none,
)
from debiascl.fairness.groups import (
    MISSING,
    as_group_array,
    group_key,
    intersect,
    is_missing,
    targets_array,
)
from debiascl.fairness.scoring import (
    choose_threshold,
    expected_calibration_error,
    roc_auc,
    task_targets,
)
from debiascl.numerics import argmax_share

__all__ = [
    "CONVENTION",
    "MISSING",
    "SCALARS",
    "FairnessWarning",
    "choose_threshold",
    "expected_calibration_error",
    "fairness_report",
    "intersect",
    "is_missing",
    "roc_auc",
]

CONVENTION = (
    "gaps are differences (0 = fair, larger = less fair): auc_gap, dpd, eod, ece_gap; "
    "auc, worst_group_auc and es_auc are performances (higher = better)"
)


class FairnessWarning(UserWarning):
    """A fairness quantity is undefined for some group (reported in the output too)."""


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
            with :func:`choose_threshold`, or ``"argmax"`` (multi-class: yhat_c = argmax == c;
            m classes tied at the top each count 1/m, the expected decision under a random
            tie-break, so rates, DPD and EOD never favour a class index).
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
    y = targets_array(targets)
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
        ys = task_targets(s, y)
        if isinstance(threshold, str):
            if threshold != "argmax" or y.ndim == 2:
                raise DataError(
                    "threshold must be a float, one float per class, or 'argmax' (multi-class)"
                )
            # ties: the expected decision over a random order of the tied top classes
            share = argmax_share(torch.from_numpy(s)).numpy()
            preds = [share[:, k] for k in range(c)]
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
        cols[name] = as_group_array(values, name, n)
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
    out["overall"]["auc"] = mean_or_none([a for a in overall_auc if a is not None])
    if len(tasks) > 1:
        out["overall"]["per_class_auc"] = {
            name: a for (name, *_), a in zip(tasks, overall_auc, strict=True)
        }
    rng = np.random.default_rng(seed)
    for name, col in cols.items():
        missing = np.array([is_missing(v) for v in col], dtype=bool)
        present = col[~missing]
        seen = sorted({group_key(v) for v in present}, key=str)
        known = None
        if known_values is not None and name in known_values:
            known = [group_key(v) for v in known_values[name]]
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
        task = GroupTask(t_s[keep], t_y[keep], col[keep], None, t_pred[keep], probabilistic)
        res, undefined = binary_group_metrics(task, order, n_bins)
        no_auc.update(undefined["auc"])
        empty.update(undefined["empty"])
        res["undefined_tpr"] = undefined["tpr"]
        res["undefined_fpr"] = undefined["fpr"]
        per_task[tname] = res
        summaries.append(res["summary"])
        if bootstrap:
            res["ci"], group_ci = bootstrap_intervals(
                task, order, n_bins, bootstrap, confidence, rng
            )
            for key, row in res["groups"].items():
                row["auc_ci"] = group_ci.get(key)
    entry: dict = {
        k: mean_or_none([s[k] for s in summaries if s.get(k) is not None]) for k in SCALARS
    }
    if probabilistic:
        for k in ("ece", "ece_gap", "max_group_ece"):
            entry[k] = mean_or_none([s[k] for s in summaries if s.get(k) is not None])
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
                    mean_or_none([t["ci"][k][0] for t in per_task.values() if t["ci"].get(k)]),
                    mean_or_none([t["ci"][k][1] for t in per_task.values() if t["ci"].get(k)]),
                ]
                for k in SCALARS
            }
            entry["ci_note"] = "macro average of the per-class interval ends"
    entry["groups_without_auc"] = sorted(no_auc, key=str)
    entry["empty_groups"] = sorted(empty, key=str)
    return entry
