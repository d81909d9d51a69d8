"""Report sections on method-specific data: SSD's eta, the fairness audit, the embedding view
and the removed-pair sample (helpers and conventions in :mod:`debiascl.report.sections`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from debiascl.report import plots
from debiascl.report.runs import RunGroup, seed_stats, value_at
from debiascl.report.sections import Section, _curves, _missing, img, note, table


def eta_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    sid, title = "eta", "SSD false-negative rates (eta) and clamping"
    hists, rows = [], []
    for group, label in zip(groups, labels, strict=True):
        run = next((r for r in group.runs if (r.eta_summary or {}).get("histogram")), None)
        if run is not None:
            h = run.eta_summary["histogram"]
            hists.append((label, h["edges"], h["counts"], group.colour))
            e = run.eta_summary
            rows.append(
                [
                    label,
                    e.get("source", "-"),
                    f"{e.get('mean', math.nan):.4f}",
                    f"{e.get('std', math.nan):.4f}",
                    _num(e.get("spearman_vs_text_count")),
                ]
            )
    clamp = [
        (n, x, m, c) for n, x, _, m, _, c in _curves(groups, labels, "negatives/clamped_fraction")
    ]
    if not hists and not clamp:
        return _missing(sid, title, "No eta table or clamp fraction (SSD/DCL/HCL) in these runs.")
    parts = []
    if hists:
        parts.append(
            img(
                "eta_histogram",
                plots.histogram_plot(hists, "Per-sample eta", "eta"),
                "eta histogram",
            )
        )
        parts.append(table(["setting", "source", "mean", "std", "Spearman vs text count"], rows))
    else:
        parts.append(note(sid, "Constant eta: no per-sample eta table to plot."))
    if clamp:
        parts.append(
            img(
                "clamped_fraction",
                plots.line_plot(
                    clamp,
                    r"Anchors at the $N e^{-1/t}$ floor",
                    "epoch",
                    "clamped fraction",
                    from_zero=True,
                ),
                "clamp",
            )
        )
    return Section(sid, title, "".join(parts))


def _fairness_attrs(run: Any) -> dict[str, Any]:
    zs = ((run.summary.get("fairness") or {}).get("zero_shot") or {}).get("fairness") or {}
    return zs.get("attributes") or {}


def group_aucs(entry: dict[str, Any]) -> dict[str, float]:
    """Per-group AUC of one audited attribute: the binary task's, or the macro average over
    classes of the one-vs-rest group AUCs."""
    tasks = [entry] if "groups" in entry else list((entry.get("per_class") or {}).values())
    acc: dict[str, list[float]] = {}
    for task in tasks:
        for g, row in (task.get("groups") or {}).items():
            auc = row.get("auc")
            if isinstance(auc, int | float) and math.isfinite(auc):
                acc.setdefault(g, []).append(float(auc))
    return {g: statistics.fmean(v) for g, v in acc.items()}


def group_auc_intervals(entry: dict[str, Any]) -> dict[str, list[float]]:
    """Per-group bootstrap interval of the AUC (``auc_ci`` of each group row); for a
    multi-class attribute the macro average of the per-class interval ends."""
    tasks = [entry] if "groups" in entry else list((entry.get("per_class") or {}).values())
    acc: dict[str, list[list[float]]] = {}
    for task in tasks:
        for g, row in (task.get("groups") or {}).items():
            ci = row.get("auc_ci")
            if ci and None not in ci:
                acc.setdefault(g, []).append([float(ci[0]), float(ci[1])])
    return {
        g: [statistics.fmean(c[0] for c in v), statistics.fmean(c[1] for c in v)]
        for g, v in acc.items()
    }


FAIRNESS_METRICS = ("auc", "worst_group_auc", "auc_gap", "es_auc", "dpd", "eod", "ece_gap")


def fairness_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    sid, title = "fairness", "Per-group AUC and fairness metrics (zero-shot)"
    parts, rows, group_rows = [], [], []
    for group, label in zip(groups, labels, strict=True):
        run = next((r for r in group.runs if _fairness_attrs(r)), None)
        if run is None:
            continue
        for attr, entry in _fairness_attrs(run).items():
            per_group = group_aucs(entry)
            ci = entry.get("ci") or {}
            if per_group:
                # groups: mean ± std over the setting's seeds; overall / worst group: the
                # bootstrap CI of the first seed with an audit
                seed_vals = [group_aucs(_fairness_attrs(r).get(attr, {})) for r in group.runs]
                g_stats = [seed_stats([v.get(g, math.nan) for v in seed_vals]) for g in per_group]
                cats = [*per_group, "overall", "worst group"]
                vals = [
                    *(m for m, _, _ in g_stats),
                    _finite(entry.get("auc")),
                    _finite(entry.get("worst_group_auc")),
                ]
                cis = [ci.get(k) or [math.nan, math.nan] for k in ("auc", "worst_group_auc")]
                lo = [*(m - s for m, s, _ in g_stats), *(_finite(c[0]) for c in cis)]
                hi = [*(m + s for m, s, _ in g_stats), *(_finite(c[1]) for c in cis)]
                kinds = [
                    (f"groups: mean ± std over {len(group.runs)} seed(s)", len(per_group)),
                    ("95% bootstrap CI (first seed)", 2),
                ]
                png = plots.interval_plot(
                    cats, vals, lo, hi, f"{label}: AUC by {attr}", "AUC", kinds=kinds
                )
                parts.append(img(f"group_auc_{attr}", png, f"AUC by {attr}"))
            for g, (lo_g, hi_g) in group_auc_intervals(entry).items():
                group_rows.append(
                    [
                        label,
                        attr,
                        g,
                        f"{per_group.get(g, math.nan):.3f}",
                        f"[{lo_g:.3f}, {hi_g:.3f}]",
                    ]
                )
            for metric in FAIRNESS_METRICS:
                stats = seed_stats(
                    [value_at(_fairness_attrs(r).get(attr, {}), metric) for r in group.runs]
                )
                interval = ci.get(metric)
                ci_text = (
                    f"[{interval[0]:.3f}, {interval[1]:.3f}]"
                    if interval and None not in interval
                    else "-"
                )
                rows.append(
                    [
                        label,
                        attr,
                        metric,
                        "-" if stats[2] == 0 else f"{stats[0]:.3f} ± {stats[1]:.3f} (n={stats[2]})",
                        ci_text,
                    ]
                )
    if not rows:
        return _missing(sid, title, "No fairness audit (sensitive attributes) in these runs.")
    parts.append(
        table(
            ["setting", "attribute", "metric", "mean ± std over seeds", "95% CI (first seed)"],
            rows,
            "fairness",
        )
    )
    if group_rows:
        parts.append(
            table(
                ["setting", "attribute", "group", "AUC (first seed)", "95% bootstrap CI"],
                group_rows,
                "fairness_groups",
            )
        )
    else:
        parts.append(
            '<p class="data-missing">No per-group AUC intervals: the audit ran without '
            "bootstrap (eval.fairness_audit.bootstrap = 0).</p>"
        )
    parts.append(
        "<p>Zero-shot classifier, macro average over classes (one-vs-rest). Plot: group AUCs as "
        "mean ± std over seeds; overall and worst-group AUC with the 95% bootstrap interval of "
        "the first seed. Gaps (auc_gap, dpd, eod, ece_gap): 0 = fair; AUCs: higher = better.</p>"
    )
    return Section(sid, title, "".join(parts))


def embedding_section(
    groups: Sequence[RunGroup], labels: Sequence[str], projection: str = "pca"
) -> Section:
    sid, title = "embeddings", "Embedding view (test split, 2-D projection)"
    parts = []
    for group, label in zip(groups, labels, strict=True):
        run = next((r for r in group.runs if r.embeddings is not None), None)
        if run is None or len(run.embeddings["features"]) < 3:
            continue
        emb = run.embeddings
        xy = plots.project_2d(emb["features"], projection, seed=0)
        class_names = (run.summary.get("zero_shot") or {}).get("auc_per_class")
        names = {i: n for i, n in enumerate(class_names)} if isinstance(class_names, dict) else {}
        names[-1] = "unknown"
        colourings = [("class", emb["labels"], names)]
        for j, attr in enumerate(emb.get("attr_names", np.array([])).tolist()):
            colourings.append((str(attr), emb["attrs"][:, j], {-1: "missing"}))
        for what, codes, cnames in colourings:
            png = plots.scatter_plot(
                xy, np.asarray(codes), cnames, f"{label} (seed {run.seed}): by {what}"
            )
            parts.append(img(f"embedding_{what}", png, f"embedding by {what}"))
    if not parts:
        return _missing(
            sid, title, "No test_embeddings.npz in these runs (evaluation did not run)."
        )
    method = "t-SNE" if projection == "tsne" else "PCA"
    parts.append(f"<p>{method} of L2-normalised backbone features of up to 2000 test samples.</p>")
    return Section(sid, title, '<div class="grid">' + "".join(parts) + "</div>")


def removed_pairs_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    sid, title = "removed_pairs", "Sample of removed pairs"
    rows = []
    for group, label in zip(groups, labels, strict=True):
        for run in group.runs:
            if not run.removed_pairs:
                continue
            agree = [p["labels_agree"] for p in run.removed_pairs if p["labels_agree"] is not None]
            sims = [p["similarity"] for p in run.removed_pairs]
            rate = f"{100 * statistics.fmean(agree):.1f}%" if agree else "-"
            rows.append(
                [
                    label,
                    run.seed,
                    len(sims),
                    f"{statistics.median(sims):.3f}",
                    rate,
                    f"debiascl explore {run.path}",
                ]
            )
    if not rows:
        return _missing(
            sid, title, "No removed_pairs.csv in these runs (no detector removed pairs)."
        )
    header = ["setting", "seed", "pairs sampled", "median similarity", "same label", "browse with"]
    return Section(sid, title, table(header, rows))


def _num(value: Any) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return f"{value:.3f}" if ok else "-"


def _finite(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else math.nan
