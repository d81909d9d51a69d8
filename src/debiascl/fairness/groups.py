"""Sensitive-attribute and target coding: missing values, intersections, target arrays.

One definition of a missing attribute value (:func:`is_missing`: every numpy/pandas marker, the
code ``-1`` and a blank string) and of missing targets (ignored, coded -1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from debiascl.errors import DataError
from debiascl.missing import as_object_column, is_blank, is_missing_marker

MISSING = -1  # attribute code of a sample whose attribute is unknown


def intersect(attributes: Mapping[str, Sequence], names: Sequence[str]) -> np.ndarray:
    """Intersectional group label per row, e.g. ``"sex=F & race=Black"``.

    ``attributes`` maps names to (n,) values; a row whose value is missing (see
    :func:`is_missing`) in any component is missing (None) in the intersection.
    """
    for name in names:
        if name not in attributes:
            raise DataError(
                f"attribute {name!r} is not in the data (have {sorted(attributes)}); "
                "add the column or remove it from the intersection"
            )
    cols = [as_object_column(attributes[name]) for name in names]
    n = len(cols[0])
    out = np.empty(n, dtype=object)
    for i in range(n):
        parts = []
        for name, col in zip(names, cols, strict=True):
            if is_missing(col[i]):
                parts = None
                break
            parts.append(f"{name}={col[i]}")
        out[i] = None if parts is None else " & ".join(parts)
    return out


def is_missing(v: object) -> bool:
    """A missing attribute value: any numpy/pandas marker (None, NaN, pd.NA, pd.NaT, NaT, masked;
    :func:`debiascl.missing.is_missing_marker`), the code ``-1`` or a blank string
    (:func:`debiascl.missing.is_blank`)."""
    if is_missing_marker(v):
        return True
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v == MISSING:
        return True
    return is_blank(v)


def group_key(v: object) -> object:
    """JSON-friendly group key (numpy scalars -> Python)."""
    return v.item() if isinstance(v, np.generic) else v


def targets_array(targets: Any) -> np.ndarray:
    """Targets as an int64 array with every missing marker as -1 (ignored)."""
    y = np.ma.filled(targets, -1) if np.ma.isMaskedArray(targets) else targets
    if hasattr(y, "to_numpy"):  # pandas: nullable Int64/boolean columns hold pd.NA
        y = y.to_numpy(dtype=object)
    y = np.asarray(y)
    if y.dtype == object or np.issubdtype(y.dtype, np.floating):
        flat = as_object_column(y.reshape(-1))
        flat = np.array([-1 if v is None else v for v in flat], dtype=np.float64)
        if not np.all(flat == np.round(flat)):
            raise DataError("targets must be integer class ids or {0, 1} (missing = ignored)")
        y = flat.astype(np.int64).reshape(y.shape)
    return y


def as_group_array(values: Sequence, name: str, n: int) -> np.ndarray:
    arr = as_object_column(values)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"attribute {name!r} has {len(arr)} values but there are {n} scores; "
            "give one attribute value per scored sample"
        )
    return arr
