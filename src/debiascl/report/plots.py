"""Matplotlib figures for the HTML report, returned as base64 PNG strings.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display), so
the report renders headless and in threads. Every function takes plain data and returns the PNG
as base64 text for an ``<img src="data:image/png;base64,...">``; callers decide beforehand that
there is data to draw (no empty plots).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from debiascl.errors import DebiasclError

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, x, y)


def require_matplotlib() -> Any:
    """The matplotlib module, or a one-line error naming the extra that provides it."""
    try:
        import matplotlib
    except ImportError:
        raise DebiasclError(
            "the HTML report needs matplotlib: pip install 'debiascl[report]'"
        ) from None
    return matplotlib


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _epoch_axis(ax: Any, xlabel: str) -> None:
    if xlabel == "epoch":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _marker(xs: Sequence[float]) -> str | None:
    return "o" if len(xs) < 30 else None


def _c(colour: list[str]) -> str | None:
    """The optional colour element of a series tuple (one colour per setting across plots)."""
    return colour[0] if colour else None


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def line_plot(
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    from_zero: bool = False,
) -> str:
    """One line per ``(label, x, y)``; ``from_zero`` starts the y axis at 0 (fractions)."""
    fig, ax = _figure()
    for label, xs, ys, *colour in series:
        ax.plot(xs, ys, marker=_marker(xs), markersize=3, label=label, color=_c(colour))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _epoch_axis(ax, xlabel)
    if logy:
        ax.set_yscale("log")
    elif from_zero:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if len(series) > 1 or series[0][0]:
        ax.legend(fontsize=7)
    return _png(fig)


def grid_plot(
    panels: dict[str, Sequence[Series]], xlabel: str, ylim: tuple[float, float] | None
) -> str:
    """Small multiples: one panel per key, the same runs in each (e.g. precision / recall / F1)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols + 1, 3.0 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    all_x = [x for series in panels.values() for _, xs, *_ in series for x in xs]
    widest = max(panels, key=lambda k: len(panels[k]))
    for i, (title, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        if all_x:  # one x range for every panel
            ax.set_xlim(min(all_x) - 0.3, max(all_x) + 0.3)
        for label, xs, ys, *colour in series:
            ax.plot(xs, ys, marker=_marker(xs), markersize=3, label=label, color=_c(colour))
        ax.set(title=title, xlabel=xlabel)
        _epoch_axis(ax, xlabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        if title == widest:
            ax.legend(fontsize=7)
    return _png(fig)


def band_plot(
    bands: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> str:
    """Median line with a shaded low-high band per ``(label, x, low, mid, high)``."""
    fig, ax = _figure()
    for label, xs, lo, mid, hi, *colour in bands:
        (line,) = ax.plot(xs, mid, marker=_marker(xs), markersize=3, label=label, color=_c(colour))
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _epoch_axis(ax, xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def bar_plot(
    categories: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    ylabel: str,
    errors_are_intervals: bool = False,
    lows_highs: Sequence[tuple[Sequence[float], Sequence[float]]] | None = None,
) -> str:
    """Grouped bars: ``groups`` = (label, values per category, spread per category).

    The spread is drawn as a symmetric error bar, or, with ``lows_highs``, as the asymmetric
    interval [low, high] per category (confidence intervals). NaN values leave a gap.
    """
    fig, ax = _figure(
        min(10.0, max(6.4, 0.55 * len(categories) * max(1, len(groups)) ** 0.5 + 2)), 4.0
    )
    x = np.arange(len(categories), dtype=float)
    width = 0.8 / max(1, len(groups))
    for i, (label, vals, spread, *colour) in enumerate(groups):
        v = np.asarray(vals, dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        if lows_highs is not None:
            lo, hi = (np.asarray(a, dtype=float) for a in lows_highs[i])
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            err = np.nan_to_num(err)
        else:
            err = np.nan_to_num(np.asarray(spread, dtype=float))
        ax.bar(pos, np.nan_to_num(v), width, yerr=err, capsize=3, label=label, color=_c(colour))
    ax.set_xticks(
        x,
        categories,
        rotation=20 if len(categories) > 4 else 0,
        ha="right" if len(categories) > 4 else "center",
        fontsize=8,
    )
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    if len(groups) > 1 or groups[0][0]:
        ax.legend(fontsize=7)
    return _png(fig)


def interval_plot(
    categories: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    title: str,
    ylabel: str,
    kinds: Sequence[tuple[str, int]] | None = None,
) -> str:
    """Points with [low, high] interval bars (NaN interval: point only), one per category.

    ``kinds``: consecutive runs of categories drawn in their own colour with a legend entry,
    as ``(legend text, how many categories)``; None draws them all alike.
    """
    fig, ax = _figure(max(5.0, 1.1 * len(categories) + 2), 3.4)
    v = np.asarray(values, dtype=float)
    lo, hi = np.asarray(lows, dtype=float), np.asarray(highs, dtype=float)
    err = np.nan_to_num(np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]))
    x = np.arange(len(categories))
    start = 0
    for i, (text, count) in enumerate(kinds or [("", len(categories))]):
        sel = slice(start, start + count)
        ax.errorbar(
            x[sel], v[sel], yerr=err[:, sel], fmt="o", capsize=4, markersize=6,
            color=f"C{i}", label=text or None,
        )  # fmt: skip
        start += count
    if kinds:
        ax.legend(fontsize=7)
    ax.set_xticks(x, categories, fontsize=8)
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def histogram_plot(
    hists: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str
) -> str:
    """Pre-binned histograms: ``(label, edges (k+1), counts (k))`` drawn as steps."""
    fig, ax = _figure()
    for label, edges, counts, *colour in hists:
        ax.stairs(
            counts,
            edges,
            fill=len(hists) == 1,
            alpha=0.6 if len(hists) == 1 else 1.0,
            label=label,
            color=_c(colour),
        )
    ax.set(title=title, xlabel=xlabel, ylabel="samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def scatter_plot(points: np.ndarray, colours: np.ndarray, names: dict[int, str], title: str) -> str:
    """2-D points coloured by an integer code (-1 = unknown, grey), legend from ``names``."""
    fig, ax = _figure(5.2, 4.4)
    codes = sorted(int(c) for c in np.unique(colours))
    cmap = _colormap(len(codes))
    for i, code in enumerate(codes):
        sel = colours == code
        colour = (0.6, 0.6, 0.6, 1.0) if code < 0 else cmap(i)
        ax.scatter(
            points[sel, 0], points[sel, 1], s=5, color=colour, label=names.get(code, str(code))
        )
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2 if len(codes) > 6 else 1)
    return _png(fig)


def _colormap(n: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"]


def project_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, 2) projection of (n, D) features: scikit-learn PCA (default) or t-SNE."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(x)
