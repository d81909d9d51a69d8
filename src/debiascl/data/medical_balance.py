"""Demographically balanced chest X-ray test sets in the CheXpert 5x200 style (see
:mod:`debiascl.data.medical`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from debiascl.data.medical_fields import CHEXPERT_5X200
from debiascl.errors import DataError
from debiascl.missing import missing_or_blank_mask


# ----------------------------------------------------------------------------- balanced test set
def balanced_test_set(
    df: Any,
    findings: Sequence[str] = CHEXPERT_5X200,
    group_columns: Sequence[str] = ("sex",),
    n_per_finding: int = 200,
    *,
    exclusive: bool = True,
    seed: int = 0,
    label_column: str = "label",
) -> tuple[Any, dict[str, Any]]:
    """A demographically balanced multi-class test set (the CheXpert 5x200 convention).

    For each finding, ``n_per_finding`` images positive for it, split equally over the groups
    (the combinations of ``group_columns``; the remainder goes to the first groups in sorted
    order). With ``exclusive`` an image qualifies only if it is positive for exactly one of
    ``findings`` (so the label is unambiguous); images are never reused across findings. Rows
    with a missing group value are not eligible. Sampling is seeded.

    Returns:
        (the selected rows with ``label_column`` = the finding name and ``group`` = the
        intersectional group, a summary ``{"counts": {finding: {group: n}}, "groups", ...}``).

    Raises:
        DataError: when some (finding, group) cell has fewer eligible images than its quota; the
            message lists the shortfalls so a smaller ``n_per_finding`` can be chosen.
    """
    import pandas as pd

    absent = [c for c in [*findings, *group_columns] if c not in df.columns]
    if absent:
        raise DataError(
            f"the manifest lacks columns {absent}; add them or choose other findings/groups"
        )
    if n_per_finding < 1:
        raise DataError(f"n_per_finding must be >= 1, got {n_per_finding}")
    known = pd.Series(True, index=df.index)
    for c in group_columns:  # the library's one definition of a missing value, blanks included
        known &= ~missing_or_blank_mask(df[c])
    group = pd.Series(
        [
            " & ".join(f"{c}={v}" for c, v in zip(group_columns, row, strict=True))
            for row in df[list(group_columns)].itertuples(index=False)
        ],
        index=df.index,
    )
    groups = sorted(group[known].unique())
    if len(groups) < 2:
        raise DataError(
            f"group columns {list(group_columns)} give {len(groups)} group(s) with data; a "
            "balanced fairness test set needs at least 2"
        )
    pos = df[list(findings)].to_numpy() == 1
    n_pos = pos.sum(1)
    rng = np.random.default_rng(seed)
    quota = {
        g: n_per_finding // len(groups) + (i < n_per_finding % len(groups))
        for i, g in enumerate(groups)
    }
    used = np.zeros(len(df), dtype=bool)
    picked: list[np.ndarray] = []
    labels: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    shortfalls = []
    for j, f in enumerate(findings):
        ok = pos[:, j] & known.to_numpy() & ~used
        if exclusive:
            ok &= n_pos == 1
        counts[f] = {}
        for g in groups:
            cand = np.flatnonzero(ok & (group.to_numpy() == g))
            if cand.size < quota[g]:
                shortfalls.append(f"{f} / {g}: {cand.size} of {quota[g]}")
                continue
            take = np.sort(rng.choice(cand, quota[g], replace=False))
            used[take] = True
            picked.append(take)
            labels += [f] * quota[g]
            counts[f][g] = int(quota[g])
    if shortfalls:
        raise DataError(
            "not enough eligible images for a balanced test set: "
            + "; ".join(shortfalls[:8])
            + "; lower n_per_finding or use fewer groups"
        )
    rows = np.concatenate(picked)
    out = df.iloc[rows].copy()
    out[label_column] = labels
    out["group"] = group.to_numpy()[rows]
    summary = {
        "n": len(out),
        "findings": list(findings),
        "groups": groups,
        "group_columns": list(group_columns),
        "n_per_finding": n_per_finding,
        "exclusive": exclusive,
        "seed": seed,
        "counts": counts,
    }
    return out.reset_index(drop=True), summary
