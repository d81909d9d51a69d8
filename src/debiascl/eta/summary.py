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
) -> dict[str, object]:
    """Summary statistics of an (N,) eta table (NaN entries are ignored and counted).

    Returns a JSON-serialisable dict with ``count``, ``missing``, ``mean``, ``std``, ``min``,
    ``max``, ``histogram`` {``edges`` (bins + 1), ``counts`` (bins)} and, when ``texts`` are given,
    ``spearman_vs_text_count`` (NaN when either side is constant) and ``distinct_texts``.
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
