"""Diagnostics of an eta table: histogram and relation to how often each text repeats.

SSD's premise is that frequent, stereotyped texts have many false negatives and should get a large
eta. :func:`eta_summary` checks that on a dataset: the Spearman rank correlation between eta and
the number of samples sharing the exact same text (1 for a unique text) should be clearly positive.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

log = logging.getLogger(__name__)


def text_counts(texts: Sequence[str | None]) -> np.ndarray:
    """(N,) float64 number of samples whose text equals sample i's text (NaN for no text)."""
    counts = Counter(t for t in texts if t is not None)
    return np.array([counts[t] if t is not None else np.nan for t in texts], dtype=np.float64)


def eta_summary(
    eta: torch.Tensor | np.ndarray,
    texts: Sequence[str | None] | None = None,
    bins: int = 10,
    log_it: bool = True,
    labels: torch.Tensor | np.ndarray | None = None,
) -> dict[str, object]:
    """Summary statistics of an (N,) eta table (NaN entries are ignored and counted).

    Returns a JSON-serialisable dict with ``count``, ``missing``, ``mean``, ``std``, ``min``,
    ``max``, ``histogram`` {``edges`` (bins + 1), ``counts`` (bins)}; when ``texts`` are given,
    ``spearman_vs_text_count`` (NaN when either side is constant), ``distinct_texts`` and
    ``by_text_count`` (mean eta of the samples whose text occurs c times, keyed by c); when (N,)
    ``labels`` are given (< 0 unknown), ``by_class`` {class: {``n``, ``mean_eta``,
    ``class_frequency``}} to compare eta with the true class share (SSD's oracle).
    """
    values = np.asarray(torch.as_tensor(eta).double().cpu().numpy()).reshape(-1)
    ok = ~np.isnan(values)
    v = values[ok]
    out: dict[str, object] = {"count": int(ok.sum()), "missing": int((~ok).sum())}
    if v.size:
        counts, edges = np.histogram(v, bins=bins)
        out.update(
            mean=float(v.mean()),
            std=float(v.std()),
            min=float(v.min()),
            max=float(v.max()),
            histogram={"edges": edges.tolist(), "counts": counts.tolist()},
        )
    if texts is not None:
        freq = text_counts(texts)
        both = ok & ~np.isnan(freq)
        rho = math.nan
        x, y = values[both], freq[both]
        if x.size > 1 and np.ptp(x) > 0 and np.ptp(y) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rho = float(spearmanr(x, y).statistic)
        out["spearman_vs_text_count"] = rho
        out["distinct_texts"] = len({t for t in texts if t is not None})
        out["by_text_count"] = {
            str(int(c)): float(values[both & (freq == c)].mean()) for c in np.unique(freq[both])
        }
    if labels is not None:
        y = np.asarray(torch.as_tensor(labels).cpu().numpy()).reshape(-1).astype(np.int64)
        if y.size == values.size:
            known = y >= 0
            total = int(known.sum())
            out["by_class"] = {
                str(int(c)): {
                    "n": int((y == c).sum()),
                    "mean_eta": float(np.nanmean(values[y == c]))
                    if bool(ok[y == c].any())
                    else math.nan,
                    "class_frequency": float((y == c).sum() / total),
                }
                for c in np.unique(y[known])
            }
    if log_it and v.size:
        log.info(
            "eta: mean %.4f std %.4f range [%.4g, %.4g], %d missing; spearman vs text count %s",
            out["mean"],
            out["std"],
            out["min"],
            out["max"],
            out["missing"],
            out.get("spearman_vs_text_count", "n/a"),
        )
    return out
