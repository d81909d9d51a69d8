"""Input checks and conversions shared by the evaluation functions.

Every evaluation accepts numpy arrays or torch tensors; these helpers turn them into one type,
check shapes, and raise :class:`~debiascl.errors.DataError` with a fix-it message otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from debiascl.errors import DataError, check
from debiascl.missing import missing_mask

ArrayLike = Any  # numpy array, torch tensor or nested sequence of numbers


def as_tensor(x: ArrayLike, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """``x`` as a torch tensor (no copy when it already is one on ``device``)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} must be a numeric array or tensor ({exc})") from exc
    return t if device is None else t.to(device)


def as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a numpy array on the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a numeric array or tensor ({exc})") from exc


def float_matrix(x: ArrayLike, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """A finite (N, D) floating tensor; integer inputs become float32, float64 stays float64."""
    t = as_tensor(x, name, device)
    check(t.dim() == 2, f"{name} must be a 2-D (N, D) array, got shape {tuple(t.shape)}", DataError)
    check(t.shape[0] > 0, f"{name} is empty; pass at least one row", DataError)
    if not t.is_floating_point():
        t = t.float()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # half precision matmuls on CPU are slow and lose ranking precision
    check(
        bool(torch.isfinite(t).all()),
        f"{name} contains NaN or inf; check the encoder output",
        DataError,
    )
    return t


def label_vector(
    y: ArrayLike, name: str, n: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """An int64 (n,) tensor of non-negative class labels.

    Missing labels (None, NaN, pd.NA, pd.NaT, masked entries; :mod:`debiascl.missing`) are one
    :class:`DataError` whatever the marker: the caller must drop unlabelled rows first.
    """
    if not isinstance(y, torch.Tensor) or y.is_floating_point():
        n_missing = int(missing_mask(y).sum()) if _may_hold_markers(y) else 0
        check(
            n_missing == 0,
            f"{name} has {n_missing} missing labels (None/NaN/NA); evaluate the labelled rows "
            "only (drop the unlabelled ones first)",
            DataError,
        )
    t = as_tensor(y, name, device)
    check(
        t.dim() == 1 and t.shape[0] == n,
        f"{name} must have shape ({n},) to match the features, got {tuple(t.shape)}",
        DataError,
    )
    check(
        not t.is_floating_point() or bool((t == t.round()).all()),
        f"{name} must hold integer class labels",
        DataError,
    )
    t = t.long()
    check(
        n == 0 or int(t.min()) >= 0,
        f"{name} has negative values; class labels must be 0..C-1 (drop unlabelled rows first)",
        DataError,
    )
    return t


def _may_hold_markers(y: ArrayLike) -> bool:
    """Whether ``y`` can hold a missing marker (object/float data, masks, or Python sequences)."""
    if isinstance(y, torch.Tensor):
        return y.is_floating_point() and y.dim() == 1
    if np.ma.isMaskedArray(y):
        return True
    if isinstance(y, np.ndarray):
        return y.ndim == 1 and (y.dtype == object or np.issubdtype(y.dtype, np.floating))
    return hasattr(y, "to_numpy") or isinstance(y, (list, tuple))


def same_width(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    check(
        a.shape[1] == b.shape[1],
        f"{name_a} has {a.shape[1]} columns but {name_b} has {b.shape[1]}; "
        "both must come from the same encoder",
        DataError,
    )


def rows_per_chunk(n_columns: int, max_elements: int = 1 << 24) -> int:
    """Rows of an (r, n_columns) similarity block that fit in ``max_elements`` (at least 1)."""
    return max(1, max_elements // max(1, n_columns))
