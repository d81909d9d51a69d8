"""One definition of a missing label, group or attribute value, used by every public function.

A value is missing when it is any of the markers numpy and pandas use: ``None``, a float NaN (any
float type, including ``np.float32``), ``pd.NA``, ``pd.NaT``, a numpy ``NaT`` (datetime64 or
timedelta64), or an entry masked in a ``numpy.ma`` masked array. Columns read by pandas with the
nullable ``string``/``Int64``/``boolean`` dtypes hold ``pd.NA``; object columns hold ``None`` or
NaN; they must all mean the same thing. Code-level conventions (attribute code ``-1``, the empty
string) are added by the callers that use them (see :func:`debiascl.fairness.metrics.is_missing`);
readers of tables (manifests, medical label columns) use :func:`missing_or_blank_mask`, which also
counts a blank cell (a string that is empty after stripping whitespace) as missing.

pandas is optional: its markers are recognised when pandas is imported (a value cannot be
``pd.NA`` otherwise).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np


def is_missing_marker(v: object) -> bool:
    """True for None, NaN (any float type), pd.NA, pd.NaT, numpy NaT and ``np.ma.masked``."""
    if v is None or v is np.ma.masked:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    if isinstance(v, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(v))
    pd = sys.modules.get("pandas")
    return pd is not None and (v is pd.NA or v is pd.NaT)


def as_object_column(values: Any) -> np.ndarray:
    """(n,) object array of ``values`` with every missing marker replaced by ``None``.

    Accepts sequences, numpy arrays (masked entries become None), pandas Series/arrays and torch
    tensors (a tensor cannot hold a marker other than NaN).
    """
    mask = None
    if np.ma.isMaskedArray(values):
        mask = np.ma.getmaskarray(values)
        values = np.ma.getdata(values)
    elif hasattr(values, "detach") and hasattr(values, "cpu"):  # torch tensor
        values = values.detach().cpu().numpy()
    elif hasattr(values, "to_numpy"):  # pandas Series / Index / extension array
        values = values.to_numpy(dtype=object)
    arr = np.empty(len(values), dtype=object) if _is_sized_1d(values) else None
    if arr is None:
        arr = np.asarray(values, dtype=object)
    else:
        arr[:] = list(values)
    if arr.ndim != 1:
        return arr
    missing = np.fromiter((is_missing_marker(v) for v in arr), dtype=bool, count=len(arr))
    if mask is not None:
        missing |= mask.reshape(-1)
    arr[missing] = None
    return arr


def _is_sized_1d(values: Any) -> bool:
    """A list/tuple/1-D array whose elements must stay scalars (not be broadcast as rows)."""
    if isinstance(values, np.ndarray):
        return values.ndim == 1
    if isinstance(values, (list, tuple)):
        return all(not isinstance(v, (list, tuple, np.ndarray)) for v in values)
    return False


def missing_mask(values: Any) -> np.ndarray:
    """(n,) bool: True where ``values`` holds a missing marker (see the module docstring)."""
    col = as_object_column(values)
    return np.fromiter((v is None for v in col), dtype=bool, count=len(col))


def is_blank(v: object) -> bool:
    """True for a string that is empty after stripping whitespace (a blank table cell)."""
    return isinstance(v, str) and not v.strip()


def missing_or_blank_mask(values: Any) -> np.ndarray:
    """(n,) bool: a missing marker (:func:`missing_mask`) or a blank string cell."""
    col = as_object_column(values)
    return np.fromiter((v is None or is_blank(v) for v in col), dtype=bool, count=len(col))
