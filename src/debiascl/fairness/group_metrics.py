"""Per-group rates, AUC gaps and bootstrap intervals of one binary task (DESIGN 3.6).

The definitions are those of :mod:`debiascl.fairness.metrics`. Decisions ``pred`` may be
fractional (the expected decision under a random order of tied scores, ``threshold="argmax"``):
every rate below is a mean of decisions, so it is then the exact expected rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from debiascl.fairness.groups import group_key
from debiascl.fairness.scoring import expected_calibration_error, roc_auc

SCALARS = ("auc", "worst_group_auc", "auc_gap", "es_auc", "dpd", "eod", "tpr_gap", "fpr_gap")


@dataclass
class GroupTask:
    scores: np.ndarray  # (n,)
    targets: np.ndarray  # (n,) in {0, 1}
    groups: np.ndarray  # (n,) object, no missing
    threshold: float | None  # None: decisions given in `pred`
    pred: np.ndarray  # (n,) bool, or float in [0, 1]: the expected decision under tied argmax
    probabilistic: bool


def binary_group_metrics(
    task: GroupTask, order: Sequence[object], n_bins: int
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
            undefined["empty"].append(group_key(key))
            rows[str(group_key(key))] = {"n": 0, "auc": None, "auc_undefined": "empty group"}
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
            undefined["auc"].append(group_key(key))
        if row["tpr"] is None:
            undefined["tpr"].append(group_key(key))
        if row["fpr"] is None:
            undefined["fpr"].append(group_key(key))
        if task.probabilistic:
            row["ece"] = expected_calibration_error(s[m], yg, n_bins)
        rows[str(group_key(key))] = row
    present = [r for r in rows.values() if r["n"] > 0]
    aucs = [r["auc"] for r in present if r["auc"] is not None]
    tprs = [r["tpr"] for r in present if r["tpr"] is not None]
    fprs = [r["fpr"] for r in present if r["fpr"] is not None]
    rates = [r["positive_rate"] for r in present]
    tpr_gap = spread(tprs)
    fpr_gap = spread(fprs)
    summary = {
        "auc": overall,
        "worst_group_auc": min(aucs) if aucs else None,
        "auc_gap": spread(aucs),
        "es_auc": (overall / (1.0 + sum(abs(overall - a) for a in aucs)))
        if overall is not None and aucs
        else None,
        "dpd": spread(rates),
        "tpr_gap": tpr_gap,
        "fpr_gap": fpr_gap,
        "eod": None if tpr_gap is None and fpr_gap is None else max(tpr_gap or 0.0, fpr_gap or 0.0),
    }
    if task.probabilistic:
        eces = [r["ece"] for r in present if r.get("ece") is not None]
        summary["ece"] = expected_calibration_error(s, y, n_bins)
        summary["ece_gap"] = spread(eces)
        summary["max_group_ece"] = max(eces) if eces else None
    return {"summary": summary, "groups": rows}, undefined


def spread(values: Sequence[float]) -> float | None:
    return float(max(values) - min(values)) if len(values) >= 1 else None


def bootstrap_intervals(
    task: GroupTask,
    order: Sequence[object],
    n_bins: int,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[dict[str, list[float] | None], dict[str, list[float] | None]]:
    """Percentile intervals, resampling rows within each group (stratified bootstrap).

    Returns ``(scalars, group_auc)``: the interval of each metric in ``SCALARS`` and, per group
    key (as in the ``groups`` rows), the interval of that group's AUC; ``None`` where no
    resample defined the value (e.g. a group with one class).
    """
    index_by_group = [np.flatnonzero(task.groups == key) for key in order]
    index_by_group = [ix for ix in index_by_group if ix.size]
    draws: dict[str, list[float]] = {k: [] for k in SCALARS}
    group_draws: dict[str, list[float]] = {str(group_key(key)): [] for key in order}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(ix, size=ix.size, replace=True) for ix in index_by_group])
        sub = GroupTask(
            task.scores[idx], task.targets[idx], task.groups[idx], None, task.pred[idx], False
        )
        res, _ = binary_group_metrics(sub, order, n_bins)
        for k in SCALARS:
            v = res["summary"][k]
            if v is not None:
                draws[k].append(v)
        for key, row in res["groups"].items():
            if row.get("auc") is not None:
                group_draws[key].append(row["auc"])
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2

    def interval(v: list[float]) -> list[float] | None:
        return [float(np.quantile(v, lo)), float(np.quantile(v, hi))] if v else None

    return (
        {k: interval(v) for k, v in draws.items()},
        {k: interval(v) for k, v in group_draws.items()},
    )


def mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None
