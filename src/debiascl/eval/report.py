"""Plain-text (or Markdown) tables of evaluation results.

Results are nested dicts as the evaluation functions return them, one per row, e.g.
``{"trained": {"linear_probe": {"100%": {"mean": .91, "std": 0.0, ...}}, "knn": {"accuracy":
.88}}, "random init": {...}, "raw pixels": {...}}``. Columns are ``/``-joined key paths such as
``"linear_probe/100%"``; a dict with ``"mean"`` and ``"std"`` is one cell shown as
``mean ± std`` (the ± part only when std > 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from debiascl.errors import ConfigError, check

Cell = tuple[float, float | None]

MAIN_COLUMNS: dict[str, str] = {
    "linear_probe/100%": "probe 100%",
    "linear_probe/10%": "probe 10%",
    "linear_probe/1%": "probe 1%",
    "knn/accuracy": "kNN",
}
"""Default columns of the summary table: linear probe per label fraction and kNN accuracy."""


def flatten_results(results: Mapping[str, Any], sep: str = "/") -> dict[str, Cell]:
    """Numeric leaves of a nested result dict as ``{"a/b/c": (value, std or None)}``.

    A dict holding ``"mean"`` becomes one cell ``(mean, std)``; lists and strings are skipped
    (per-seed values stay in the JSON summary).
    """
    out: dict[str, Cell] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            if "mean" in node and isinstance(node["mean"], (int, float)):
                std = node.get("std")
                out[prefix] = (float(node["mean"]), None if std is None else float(std))
                return
            for key, value in node.items():
                walk(value, f"{prefix}{sep}{key}" if prefix else str(key))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix] = (float(node), None)

    walk(results, "")
    return out


def _format_cell(cell: Cell | None, scale: float, digits: int, missing: str) -> str:
    if cell is None:
        return missing
    value, std = cell
    if math.isnan(value):
        return "nan"
    text = f"{value * scale:.{digits}f}"
    if std is not None and std > 0:
        text += f" ± {std * scale:.{digits}f}"
    return text


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] | Mapping[str, str] | None = None,
    *,
    row_header: str = "model",
    percent: bool = True,
    digits: int = 1,
    missing: str = "-",
    style: Literal["plain", "markdown"] = "plain",
) -> str:
    """An aligned table: one row per entry of ``rows``, one column per key path.

    Args:
        rows: row name -> nested results.
        columns: key paths, or path -> header; default: every numeric path, in first-seen order.
        row_header: header of the first column.
        percent: show values x100 (accuracies, recalls and AUCs are stored in [0, 1]).
        digits: decimals shown.
        missing: text for a path a row does not have.
        style: ``"plain"`` (space-aligned, dashed rule) or ``"markdown"`` (pipe table).

    Returns:
        The table as one string without a trailing newline.
    """
    check(style in ("plain", "markdown"), f"unknown table style {style!r}", ConfigError)
    flat = {name: flatten_results(res) for name, res in rows.items()}
    if columns is None:
        paths: list[str] = []
        for cells in flat.values():
            paths.extend(p for p in cells if p not in paths)
        headers = dict(zip(paths, paths, strict=True))
    elif isinstance(columns, Mapping):
        headers = dict(columns)
    else:
        headers = {p: p for p in columns}

    scale = 100.0 if percent else 1.0
    table = [[row_header, *headers.values()]]
    for name, cells in flat.items():
        table.append(
            [str(name)] + [_format_cell(cells.get(p), scale, digits, missing) for p in headers]
        )
    min_width = 3 if style == "markdown" else 1  # a Markdown rule cell needs "--:" at least
    widths = [max(min_width, *(len(r[i]) for r in table)) for i in range(len(table[0]))]

    def line(cells: list[str], sep: str) -> str:
        parts = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)
        ]
        return sep.join(parts)

    if style == "markdown":
        rule = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]
        body = [line(table[0], " | "), line(rule, " | ")] + [line(r, " | ") for r in table[1:]]
        return "\n".join(f"| {b} |" for b in body)
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(table[0], "  "), rule] + [line(r, "  ") for r in table[1:]])
