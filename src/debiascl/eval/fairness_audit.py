"""The fairness audit of a frozen model (DESIGN 3.6 and 4): zero-shot, few-shot, leakage.

* :func:`audit_scores`: thresholds chosen on a validation split, the full
  :func:`~debiascl.fairness.metrics.fairness_report` on the test split.
* :func:`zero_shot_audit`: zero-shot class probabilities (prompt-ensemble class embeddings,
  :mod:`debiascl.eval.zero_shot`) audited on the test split.
* :func:`few_shot_audit`: logistic-regression probes on k labelled images per class (several
  seeds, :func:`debiascl.eval.linear_probe.few_shot_subset`), each audited; mean and spread over
  seeds of every headline metric.
* :func:`leakage_probe`: a **fresh** logistic regression trained on frozen embeddings of a
  training split to predict a sensitive attribute, scored on a held-out split (accuracy, balanced
  accuracy, AUC versus chance). It measures whether the attribute is still encoded, independently
  of any adversary used in training (DESIGN 3.5).
* :func:`format_audit`: a readable text table of an audit.

Every function returns a JSON-serialisable dict. Attributes are given as name -> (n,) values
(strings or integer codes; missing = None/NaN/-1/"").
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from debiascl.errors import DataError
from debiascl.eval._arrays import ArrayLike, as_numpy
from debiascl.eval.leakage import leakage_probe as leakage_probe  # re-exported: part of the audit
from debiascl.eval.linear_probe import FALLBACK_C, few_shot_subset, select_C
from debiascl.eval.report import format_table
from debiascl.eval.zero_shot import zero_shot_accuracy, zero_shot_scores
from debiascl.fairness.metrics import choose_threshold, fairness_report
from debiascl.missing import as_object_column

HEADLINE = ("auc", "worst_group_auc", "auc_gap", "es_auc", "dpd", "eod", "ece_gap")
Attrs = Mapping[str, ArrayLike | Sequence]


def _attrs_np(attrs: Attrs, n: int, split: str) -> dict[str, np.ndarray]:
    out = {}
    for name, values in attrs.items():
        arr = as_object_column(values)
        if arr.ndim != 1 or len(arr) != n:
            raise DataError(
                f"attribute {name!r} of the {split} split has {len(arr)} values for {n} samples; "
                "give one value per sample"
            )
        out[name] = arr
    return out


def _binary_if_two(scores: np.ndarray) -> np.ndarray:
    """(n, 2) probabilities -> (n,) probability of class 1 (a binary task)."""
    return scores[:, 1] if scores.ndim == 2 and scores.shape[1] == 2 else scores


def audit_scores(
    val_scores: ArrayLike,
    val_targets: ArrayLike,
    test_scores: ArrayLike,
    test_targets: ArrayLike,
    test_attrs: Attrs,
    *,
    decision: str = "youden",
    **report_kwargs: Any,
) -> dict[str, Any]:
    """Fairness report on the test split with decision thresholds from the validation split.

    Args:
        val_scores, test_scores: (n,) binary or (n, C) class/label scores (probabilities for
            calibration errors).
        val_targets, test_targets: matching targets (see :func:`fairness_report`).
        test_attrs: name -> (n_test,) group values.
        decision: ``"argmax"`` (multi-class) or a threshold rule of :func:`choose_threshold`
            (``"youden"``, ``"f1"``, ``"prevalence"``) applied to the **validation** scores.
        report_kwargs: passed to :func:`fairness_report` (intersections, known_values,
            class_names, bootstrap, seed, n_bins).
    """
    ts = as_numpy(test_scores, "test_scores").astype(np.float64)
    ty = as_numpy(test_targets, "test_targets")
    if decision == "argmax":
        threshold: Any = "argmax"
    else:
        vs = as_numpy(val_scores, "val_scores").astype(np.float64)
        vy = as_numpy(val_targets, "val_targets")
        if len(vs) != len(vy):
            raise DataError(
                f"validation split has {len(vs)} scores and {len(vy)} targets; pass one each"
            )
        threshold = choose_threshold(vs, vy, decision)
    rep = fairness_report(
        ts, ty, _attrs_np(test_attrs, len(ts), "test"), threshold, **report_kwargs
    )
    rep["decision"] = decision if decision == "argmax" else f"threshold by {decision} on validation"
    return rep


def zero_shot_audit(
    val_emb: ArrayLike,
    val_targets: ArrayLike,
    test_emb: ArrayLike,
    test_targets: ArrayLike,
    test_attrs: Attrs,
    class_emb: ArrayLike,
    *,
    logit_scale: float = 100.0,
    decision: str | None = None,
    **report_kwargs: Any,
) -> dict[str, Any]:
    """Audit zero-shot classification: softmax over ``logit_scale * cos(image, class)``.

    Args:
        val_emb, test_emb: (n, D) image embeddings of the validation and test splits.
        class_emb: (C, D) class embeddings (prompt ensembles, see
            :func:`debiascl.eval.zero_shot.class_embeddings`). With C = 2 the task is binary
            (class 1 = positive, e.g. "finding present").
        decision: default ``"argmax"`` for C > 2 and ``"youden"`` (on validation) for C = 2.

    Returns:
        ``{"accuracy", "fairness": audit_scores(...)}``.
    """
    val_p = zero_shot_scores(val_emb, class_emb, logit_scale).softmax(1).cpu().numpy()
    test_p = zero_shot_scores(test_emb, class_emb, logit_scale).softmax(1).cpu().numpy()
    ty = as_numpy(test_targets, "test_targets")
    decision = decision or ("youden" if test_p.shape[1] == 2 else "argmax")
    known = ty >= 0  # negative targets are ignored, as in the fairness report
    acc = zero_shot_accuracy(test_p[known], ty[known])  # exact ties count by their expected hit
    if decision == "argmax":
        rep = audit_scores(None, None, test_p, ty, test_attrs, decision="argmax", **report_kwargs)
    else:
        rep = audit_scores(
            _binary_if_two(val_p),
            as_numpy(val_targets, "val_targets"),
            _binary_if_two(test_p),
            ty,
            test_attrs,
            decision=decision,
            **report_kwargs,
        )
    return {"accuracy": acc, "fairness": rep}


def _fit_probe(x: np.ndarray, y: np.ndarray, C: float | None, seed: int) -> Any:
    scaler = StandardScaler().fit(x)
    if C is None:
        C = select_C(x, y, seed=seed) if np.unique(y, return_counts=True)[1].min() >= 2 else None
        C = FALLBACK_C if C is None else C
    clf = LogisticRegression(C=C, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x), y)
    return scaler, clf, float(C)


def _probs(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) probabilities; classes absent from the fit get probability 0."""
    scaler, clf, _ = model
    p = clf.predict_proba(scaler.transform(x))
    out = np.zeros((len(x), n_classes))
    out[:, clf.classes_.astype(np.int64)] = p
    return out


def few_shot_audit(
    train_x: ArrayLike,
    train_y: ArrayLike,
    val_x: ArrayLike,
    val_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    test_attrs: Attrs,
    *,
    shots: Sequence[int] = (1, 4, 16),
    seeds: int = 3,
    C: float | None = None,
    decision: str | None = None,
    **report_kwargs: Any,
) -> dict[str, Any]:
    """Few-shot linear probes (k labelled images per class, ``seeds`` draws), each audited.

    The probe sees only its k-shot subset of the training split; thresholds come from the
    validation split; the test split is scored once per probe. ``C`` None selects it by CV on the
    k-shot subset (:func:`select_C`; :data:`FALLBACK_C` when k = 1).

    Returns:
        ``{"<k>-shot": {"accuracy": {mean, std, per_seed}, "<attr>": {metric: {mean, std,
        per_seed}}, "per_seed": [audit, ...]}}``.
    """
    tx = as_numpy(train_x, "train_x").astype(np.float64)
    ty = as_numpy(train_y, "train_y").astype(np.int64)
    vx = as_numpy(val_x, "val_x").astype(np.float64)
    vy = as_numpy(val_y, "val_y").astype(np.int64)
    sx = as_numpy(test_x, "test_x").astype(np.float64)
    sy = as_numpy(test_y, "test_y").astype(np.int64)
    n_classes = int(max(ty.max(), vy.max(), sy.max())) + 1
    decision = decision or ("youden" if n_classes == 2 else "argmax")
    attrs = _attrs_np(test_attrs, len(sx), "test")
    out: dict[str, Any] = {}
    for k in shots:
        audits, accs = [], []
        for seed in range(seeds):
            rows = few_shot_subset(ty, k, seed)
            model = _fit_probe(tx[rows], ty[rows], C, seed)
            vp, sp = _probs(model, vx, n_classes), _probs(model, sx, n_classes)
            known = sy >= 0  # top-1 on the labelled rows, ties by their expected hit
            accs.append(zero_shot_accuracy(sp[known], sy[known]))
            rep = audit_scores(
                _binary_if_two(vp),
                vy,
                _binary_if_two(sp),
                sy,
                attrs,
                decision=decision,
                **report_kwargs,
            )
            rep["probe"] = {"seed": seed, "n_train": int(rows.size), "C": model[2]}
            audits.append(rep)
        entry: dict[str, Any] = {"accuracy": _spread(accs)}
        for name in audits[0]["attributes"]:
            entry[name] = {
                m: _spread([a["attributes"][name].get(m) for a in audits]) for m in HEADLINE
            }
        entry["per_seed"] = audits
        out[f"{k}-shot"] = entry
    return out


def _spread(values: Sequence[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    arr = np.asarray(vals, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "per_seed": [float(v) for v in arr],
    }


def format_audit(audit: Mapping[str, Any], digits: int = 3) -> str:
    """A text table of an audit dict made of fairness reports, few-shot entries and leakage.

    Recognised entries: a fairness report (has ``"attributes"``), ``{"fairness": report}``
    (zero-shot), a few-shot result ``{"<k>-shot": ...}`` and a leakage-probe dict (has
    ``"chance_accuracy"``), at the top level or one level down (e.g. ``{"zero_shot": ...,
    "few_shot": ..., "leakage": {"sex": ...}}``).
    """
    rows: dict[str, dict[str, Any]] = {}
    leak: dict[str, dict[str, Any]] = {}
    notes: list[str] = []

    def add_report(prefix: str, rep: Mapping[str, Any]) -> None:
        notes.extend(rep.get("warnings", []))
        for name, entry in rep["attributes"].items():
            rows[f"{prefix} | {name}"] = {m: entry.get(m) for m in HEADLINE}

    def visit(prefix: str, node: Any) -> None:
        if not isinstance(node, Mapping):
            return
        if "attributes" in node:
            add_report(prefix, node)
        elif "fairness" in node and isinstance(node["fairness"], Mapping):
            add_report(prefix, node["fairness"])
        elif "chance_accuracy" in node:
            leak[prefix] = node
        elif node and all(str(k).endswith("-shot") for k in node):
            for k, entry in node.items():
                for name, metrics in entry.items():
                    if name in ("accuracy", "per_seed") or not isinstance(metrics, Mapping):
                        continue
                    rows[f"{prefix} {k} | {name}"] = dict(metrics)
                for rep in entry.get("per_seed", []):
                    notes.extend(rep.get("warnings", []))
        else:
            for key, value in node.items():
                visit(f"{prefix}/{key}" if prefix else str(key), value)

    visit("", audit)
    parts = []
    if rows:
        parts.append(
            "Fairness (gaps: 0 = fair; AUC-type: higher = better; mean ± std over seeds)\n"
            + format_table(
                rows,
                list(HEADLINE),
                row_header="evaluation | attribute",
                percent=False,
                digits=digits,
            )
        )
    if leak:
        cols = ["accuracy", "chance_accuracy", "balanced_accuracy", "auc", "chance_auc"]
        parts.append(
            "Attribute leakage (fresh linear probe on frozen embeddings; chance = no leakage)\n"
            + format_table(leak, cols, row_header="probe", percent=False, digits=digits)
        )
    if notes:
        parts.append("Notes:\n" + "\n".join(f"- {n}" for n in dict.fromkeys(notes)))
    return "\n\n".join(parts)
