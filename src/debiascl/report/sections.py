"""The sections of the HTML report; each returns HTML, or a one-line note when no run has data.

A section is a function ``(groups, labels) -> Section``. Plots come from
:mod:`debiascl.report.plots` as base64 PNG and are tagged ``data-plot="<name>"``; notes about
missing data carry ``class="note"`` and ``data-missing="<section id>"``, so tests (and readers)
can tell a left-out section from an empty one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from debiascl.report import plots
from debiascl.report.runs import RunGroup, config_differences, seed_stats, value_at


@dataclass
class Section:
    id: str
    title: str
    body: str
    missing: bool = False


def img(name: str, png: str, alt: str) -> str:
    return f'<img data-plot="{escape(name)}" alt="{escape(alt)}" src="data:image/png;base64,{png}">'


def note(section_id: str, text: str) -> str:
    return f'<p class="note" data-missing="{escape(section_id)}">{escape(text)}</p>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _missing(section_id: str, title: str, text: str) -> Section:
    return Section(section_id, title, note(section_id, text), missing=True)


def group_curve(group: RunGroup, key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean over seeds, std over seeds) of a metrics.jsonl key; epochs any seed has."""
    by_epoch: dict[int, list[float]] = {}
    for run in group.runs:
        for x, y in zip(*run.series(key), strict=True):
            by_epoch.setdefault(x, []).append(y)
    xs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[x]) for x in xs]
    stds = [statistics.stdev(by_epoch[x]) if len(by_epoch[x]) > 1 else 0.0 for x in xs]
    return xs, means, stds


def _curves(groups: Sequence[RunGroup], labels: Sequence[str], key: str) -> list[Any]:
    out = []
    for group, label in zip(groups, labels, strict=True):
        xs, mean, std = group_curve(group, key)
        if xs:
            n = len(group.runs)
            name = label if n == 1 else f"{label} (mean ± std, {n} seeds)"
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            out.append((name, xs, lo, mean, hi, group.colour))
    return out


def _fmt(mean: float, std: float, n: int, runs: int, scale: float = 100.0) -> str:
    """mean ± std; the seed count is added when fewer than all the setting's runs have it."""
    if n == 0 or not math.isfinite(mean):
        return "-"
    return f"{scale * mean:.1f} ± {scale * std:.1f}" + (f" (n={n})" if n < runs else "")


# ----------------------------------------------------------------------------- sections
def runs_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    rows = []
    for group, label in zip(groups, labels, strict=True):
        for run in group.runs:
            rows.append(
                [
                    label,
                    run.seed,
                    run.summary.get("epochs", "-"),
                    run.summary.get("steps", "-"),
                    str(run.path),
                ]
            )
    return Section("runs", "Runs", table(["setting", "seed", "epochs", "steps", "directory"], rows))


def config_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    if len(groups) < 2:
        return _missing(
            "config", "Config differences", "One setting only: no config differences to show."
        )
    diffs = config_differences(groups)
    rows = [[key, *(str(v) for v in vals)] for key, vals in diffs.items()]
    return Section("config", "Config differences", table(["key", *labels], rows))


RESULT_PATHS = {
    "knn/accuracy": "kNN",
    "zero_shot/accuracy": "zero-shot acc",
    "zero_shot/auc_macro": "zero-shot AUC",
    "retrieval/image_to_text/R@1": "I→T R@1",
    "retrieval/image_to_text/R@5": "I→T R@5",
    "retrieval/text_to_image/R@1": "T→I R@1",
    "retrieval/text_to_image/R@5": "T→I R@5",
    "fn_detection/removed_fraction": "FN removed",
    "fn_detection/precision": "FN precision",
    "fn_detection/recall": "FN recall",
}


def result_paths(groups: Sequence[RunGroup]) -> dict[str, str]:
    """Linear-probe fractions found in the runs, then :data:`RESULT_PATHS`, where any run has it."""
    fractions = {k for g in groups for r in g.runs for k in (r.summary.get("linear_probe") or {})}
    paths = {
        f"linear_probe/{f}": f"LP {f}"
        for f in sorted(fractions, key=lambda f: -float(f.rstrip("%")))
    }
    paths.update(RESULT_PATHS)
    return {
        p: h
        for p, h in paths.items()
        if any(math.isfinite(value_at(r.summary, p)) for g in groups for r in g.runs)
    }


def results_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    paths = result_paths(groups)
    if not paths:
        return _missing(
            "results", "Results", "No evaluation results in these runs (trained with --no-eval?)."
        )
    rows, bars = [], []
    for group, label in zip(groups, labels, strict=True):
        stats = [seed_stats([value_at(r.summary, p) for r in group.runs]) for p in paths]
        seeds = ",".join(str(s) for s in group.seeds)
        rows.append(
            [label, *(_fmt(*s, len(group.runs)) for s in stats), f"{len(group.runs)} ({seeds})"]
        )
        bars.append((label, [100 * s[0] for s in stats], [100 * s[1] for s in stats], group.colour))
    body = table(["setting", *paths.values(), "seeds"], rows, "results")
    body += (
        "<p>Mean ± sample standard deviation over seeds, in % (n = seeds with the value where "
        "fewer than all).</p>"
    )
    png = plots.bar_plot(list(paths.values()), bars, "Results (mean ± std over seeds)", "%")
    return Section(
        "results",
        "Results: linear probe, kNN, zero-shot, retrieval",
        body + img("results", png, "results"),
    )


def curves_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    parts = []
    for key, title in (("loss", "Training loss"), ("lr", "Learning rate")):
        bands = _curves(groups, labels, key)
        if bands:
            parts.append(img(key, plots.band_plot(bands, title, "epoch", key), title))
        else:
            parts.append(note("curves", f"No '{key}' in metrics.jsonl of these runs."))
    missing = all('class="note"' in p for p in parts)
    body = '<div class="grid">' + "".join(parts) + "</div>"
    return Section("curves", "Loss and learning rate", body, missing=missing)


def detection_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    sid, title = "detection", "False-negative removal and detection quality"
    # settings whose detector never removed anything (none / SSD only) are left out
    active = [
        (g, lab)
        for g, lab in zip(groups, labels, strict=True)
        if any(v > 0 for r in g.runs for v in r.series("negatives/removed_fraction")[1])
    ]
    groups, labels = [g for g, _ in active], [lab for _, lab in active]
    removed = [
        (n, x, m, c) for n, x, _, m, _, c in _curves(groups, labels, "negatives/removed_fraction")
    ]
    if not removed:
        return _missing(sid, title, "No false-negative detector removed negatives in these runs.")
    parts = [
        img(
            "removed_fraction",
            plots.line_plot(
                removed, "Removed fraction of negatives", "epoch", "fraction", from_zero=True
            ),
            "removed",
        )
    ]
    panels = {}
    for key in ("precision", "recall", "f1"):
        series = [(n, x, m, c) for n, x, _, m, _, c in _curves(groups, labels, f"negatives/{key}")]
        if series:
            panels[key] = series
    if panels:
        parts.append(
            img(
                "detection_quality",
                plots.grid_plot(panels, "epoch", (0.0, 1.03)),
                "precision recall F1",
            )
        )
        parts.append("<p>True false negative = a negative with the anchor's class label.</p>")
    else:
        parts.append(note(sid, "No labels: detection precision / recall / F1 cannot be scored."))
    return Section(sid, title, "".join(parts))


def _lambda_directions(groups: Sequence[RunGroup]) -> list[str]:
    keys = {k for g in groups for r in g.runs for k in r.metric_keys()}
    return sorted(
        k.removeprefix("negatives/lambda/").removesuffix("/p50")
        for k in keys
        if k.startswith("negatives/lambda/") and k.endswith("/p50")
    )


def threshold_section(groups: Sequence[RunGroup], labels: Sequence[str]) -> Section:
    sid, title = "thresholds", "Per-anchor thresholds (lambda) over time"
    directions = _lambda_directions(groups)
    if not directions:
        return _missing(sid, title, "No learned per-anchor thresholds (GloFND) in these runs.")
    parts = []
    for direction in directions:
        bands = []
        for group, label in zip(groups, labels, strict=True):
            p = f"negatives/lambda/{direction}"
            xs, lo, _ = group_curve(group, f"{p}/p10")
            _, mid, _ = group_curve(group, f"{p}/p50")
            _, hi, _ = group_curve(group, f"{p}/p90")
            if xs and len(xs) == len(mid) == len(hi):
                bands.append((label, xs, lo, mid, hi, group.colour))
        if bands:
            png = plots.band_plot(
                bands, f"lambda ({direction}): median, 10-90% band", "epoch", "lambda"
            )
            parts.append(img(f"lambda_{direction}", png, f"lambda {direction}"))
    parts.append(
        "<p>Quantiles over the visited samples' thresholds at each epoch end (seed mean).</p>"
    )
    return Section(sid, title, "".join(parts))
