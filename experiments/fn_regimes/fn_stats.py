"""Statistics and tables of the regime study (experiments/fn_regimes/run.py): paired t
intervals, the recovered share of the oracle gain with a bootstrap interval, verdicts, Markdown."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    from scipy import stats

    n = len(diffs)
    m = statistics.fmean(diffs)
    if n < 2:
        return m, math.nan, math.nan
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return m, m - half, m + half


def share_interval(d_method: np.ndarray, d_oracle: np.ndarray) -> tuple[float, float, float]:
    """Recovered share mean(d_m) / mean(d_o) with a 95% percentile bootstrap over seeds."""
    point = float(d_method.mean() / d_oracle.mean()) if d_oracle.mean() != 0 else math.nan
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(d_method), size=(10_000, len(d_method)))
    num, den = d_method[idx].mean(1), d_oracle[idx].mean(1)
    ok = den > 0  # resamples whose oracle gain vanished have no share
    ratios = num[ok] / den[ok]
    if ratios.size == 0:
        return point, math.nan, math.nan
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return point, float(lo), float(hi)


def _pct(x: float, digits: int = 1) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _interval(lo: float, hi: float, scale: float = 100.0, digits: int = 1) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undefined"
    return f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def verdict(row: dict[str, Any]) -> str:
    """From the paired t interval of (method - none) and the recovered share.

    helps: the interval lies above 0 and the share is at least one half; helps a little: above
    0 with a smaller share (or no oracle gain to share); hurts: the interval lies below 0;
    otherwise no clear effect.
    """
    diff, share = row.get("diff"), row.get("share")
    if not diff or not math.isfinite(diff[1]):
        return "no clear effect"
    if diff[1] > 0:
        return "helps" if share and share[0] >= 0.5 else "helps a little"
    if diff[2] < 0:
        return "hurts"
    return "no clear effect"


METRIC_NAMES = {
    "zero_shot/accuracy": "zero-shot",
    "linear_probe/10%/mean": "LP 10%",
    "knn/accuracy": "kNN",
}


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for regime, reg in result.items():
        lines += [f"### {reg['label']} (`{regime}`)", ""]
        det = reg["detection"]
        lines += [
            "| method | setting (chosen on validation) | removed % | precision % | recall % |",
            "|---|---|---|---|---|",
        ]
        for m, d in det.items():
            lines.append(
                f"| {m} | {reg['settings'][m] or '-'} | {_pct(d['removed'])} | "
                f"{_pct(d['precision'])} | {_pct(d['recall'])} |"
            )
        lines.append("")
        for metric, cell in reg["metrics"].items():
            lines += [
                f"{METRIC_NAMES.get(metric, metric)}:",
                "",
                "| method | seeds | % (mean ± sd) | vs none, paired (95% t) | recovered share "
                "of the oracle gain (95% bootstrap) | verdict |",
                "|---|---|---|---|---|---|",
            ]
            for m, row in cell["rows"].items():
                diff = row.get("diff")
                d = f"{100 * diff[0]:+.1f} {_interval(diff[1], diff[2])}" if diff else "-"
                share = row.get("share")
                sh = f"{share[0]:.2f} {_interval(share[1], share[2], 1, 2)}" if share else "-"
                v = verdict(row) if m not in ("none", "oracle") else "-"
                lines.append(
                    f"| {m} | {len(row['seeds'])} | {_pct(row['mean'])} ± {_pct(row['std'])} | "
                    f"{d} | {sh} | {v} |"
                )
            lines.append("")
    return "\n".join(lines)


def merged(path: Path, new: dict[str, Any], run: set[str], order: list[str]) -> dict[str, Any]:
    """The recorded per-regime entries of ``path`` with the regimes in ``run`` replaced by
    ``new``'s, in ``order``."""
    old = json.loads(path.read_text()) if path.exists() else {}
    both = {**{k: v for k, v in old.items() if k not in run}, **new}
    return dict(sorted(both.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def merged_table(path: Path, table: str, run: set[str], order: list[str]) -> str:
    """A validation ``table`` (Markdown, regime in the first column) plus the rows recorded in
    ``path`` of regimes not in ``run``."""
    lines = table.split("\n")
    kept = []
    if path.exists():
        for line in path.read_text().splitlines()[2:]:
            regime = line.split("|")[1].strip() if line.startswith("|") else ""
            if regime and regime not in run:
                kept.append(line)
    body = sorted(kept + lines[2:], key=lambda ln: order.index(ln.split("|")[1].strip()))
    return "\n".join(lines[:2] + body)
