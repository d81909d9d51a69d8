"""Every pandas/numpy missing marker means the same as None (issue 10, item 16).

``pd.NA`` (pandas ``string``/``Int64`` columns) used to crash ``fairness_report`` with a
TypeError while None/NaN were treated as missing. Each public function that takes labels, groups
or attributes is run here with one marker at a time and must give exactly the result it gives
with None (or, for labels, the same error).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from debiascl.errors import DataError
from debiascl.eval import knn_eval, zero_shot_accuracy
from debiascl.eval.fairness_audit import audit_scores, leakage_probe
from debiascl.fairness.metrics import fairness_report, intersect
from debiascl.missing import as_object_column, is_missing_marker

MARKERS = {
    "pd.NA": pd.NA,
    "NaN": float("nan"),
    "np.float32 NaN": np.float32("nan"),
    "pd.NaT": pd.NaT,
    "np.datetime64 NaT": np.datetime64("NaT"),
}
MISSING_AT = [3, 10, 17]


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 40
    y = rng.integers(0, 2, n)
    s = np.clip(0.3 * y + 0.5 * rng.random(n), 0, 1)
    sex = np.array(["F", "M"] * (n // 2), dtype=object)
    site = np.array([1, 2, 3, 4] * (n // 4), dtype=object)
    return s, y, sex, site


def with_missing(col: np.ndarray, marker) -> np.ndarray:
    out = col.copy()
    out[MISSING_AT] = marker
    return out


def as_columns(col: np.ndarray, kind: str):
    """The same attribute as a pandas nullable column, a masked array or a list."""
    if kind == "string":
        return pd.Series([None if v is None else str(v) for v in col], dtype="string")
    if kind == "Int64":
        return pd.Series([None if v is None else int(v) for v in col], dtype="Int64")
    if kind == "masked":
        filled = np.array([0 if v is None else v for v in col], dtype=object)
        return np.ma.array(filled, mask=[v is None for v in col])
    return list(col)


def test_markers_are_recognised_and_others_are_not():
    for marker in [None, *MARKERS.values(), np.ma.masked]:
        assert is_missing_marker(marker)
    for value in [0, -1, "", "NA", 0.0, False, np.int64(3), "nan"]:
        assert not is_missing_marker(value)
    col = as_object_column(np.ma.array([1, 2, 3], mask=[False, True, False]))
    assert col.tolist() == [1, None, 3]


@pytest.mark.parametrize("name", MARKERS)
def test_fairness_report_treats_each_marker_as_none(name):
    s, y, sex, _ = data()
    ref = fairness_report(s, y, {"sex": with_missing(sex, None)}, 0.5)
    got = fairness_report(s, y, {"sex": with_missing(sex, MARKERS[name])}, 0.5)
    assert got == ref
    assert ref["attributes"]["sex"]["n_missing"] == len(MISSING_AT)


@pytest.mark.parametrize("kind", ["string", "Int64", "masked", "list"])
def test_fairness_report_nullable_pandas_and_masked_columns(kind):
    s, y, _, site = data(1)
    site_none = with_missing(site, None)
    ref = fairness_report(s, y, {"site": site_none}, 0.5, intersections=[("site", "site")])
    col = as_columns(site_none, kind)
    got = fairness_report(s, y, {"site": col}, 0.5, intersections=[("site", "site")])
    if kind == "string":  # the values are now strings "1".."4": compare everything but the keys
        assert got["attributes"]["site"]["n_missing"] == ref["attributes"]["site"]["n_missing"]
        for key in ("auc_gap", "dpd", "eod", "worst_group_auc"):
            assert got["attributes"]["site"][key] == ref["attributes"]["site"][key]
    else:
        assert got == ref


@pytest.mark.parametrize("name", MARKERS)
def test_intersect_and_targets_treat_each_marker_as_none(name):
    s, y, sex, site = data(2)
    marker = MARKERS[name]
    cols_ref = {"sex": with_missing(sex, None), "site": site}
    cols = {"sex": with_missing(sex, marker), "site": site}
    assert (
        intersect(cols, ["sex", "site"]).tolist() == intersect(cols_ref, ["sex", "site"]).tolist()
    )
    if name in ("pd.NaT", "np.datetime64 NaT"):
        return  # a NaT is not a number; targets are numeric
    y_none = y.astype(object)
    y_none[MISSING_AT] = None
    y_marker = y.astype(object)
    y_marker[MISSING_AT] = marker
    y_neg = y.copy()
    y_neg[MISSING_AT] = -1  # the documented "ignore" code
    ref = fairness_report(s, y_neg, {"sex": sex}, 0.5)
    assert fairness_report(s, y_none, {"sex": sex}, 0.5) == ref
    assert fairness_report(s, y_marker, {"sex": sex}, 0.5) == ref
    nullable = pd.Series(list(y), dtype="Int64")
    nullable[MISSING_AT] = pd.NA
    assert fairness_report(s, nullable, {"sex": sex}, 0.5) == ref


@pytest.mark.parametrize("name", ["None", *MARKERS])
def test_labels_with_any_marker_give_the_same_error(name):
    marker = None if name == "None" else MARKERS[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 4))
    labels = np.array([0, 1, 2] * 4, dtype=object)
    labels[5] = marker
    with pytest.raises(DataError, match="1 missing labels"):
        knn_eval(x, labels, x, np.arange(12) % 3, k=2)
    with pytest.raises(DataError, match="1 missing labels"):
        zero_shot_accuracy(x[:, :3], labels)


@pytest.mark.parametrize("name", MARKERS)
def test_audit_and_leakage_probe_treat_each_marker_as_none(name):
    rng = np.random.default_rng(4)
    sex = np.array(["F", "M"] * 20, dtype=object)
    x = rng.standard_normal((40, 5)) + (sex == "F")[:, None]
    marker_col, none_col = with_missing(sex, MARKERS[name]), with_missing(sex, None)
    ref = leakage_probe(x, none_col, x, none_col)
    assert leakage_probe(x, marker_col, x, marker_col) == ref
    nullable = pd.Series(list(none_col), dtype="string")
    assert leakage_probe(x, nullable, x, nullable) == ref
    s, y, _, _ = data(5)
    ref_a = audit_scores(s, y, s, y, {"sex": none_col})
    assert audit_scores(s, y, s, y, {"sex": nullable}) == ref_a
