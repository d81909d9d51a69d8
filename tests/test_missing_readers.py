"""Table readers use the library's one definition of a missing value (issue 10, item 16).

Manifest columns (labels, attributes), CheXpert finding labels and the balanced test set's group
columns read every numpy/pandas marker and a blank cell ("", "  ") as missing, exactly like None.
Before, a blank string was a category of its own in manifests and balanced sets, and a typo in a
finding label ("maybe") silently became a blank (0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from debiascl.data.manifest import encode_column
from debiascl.data.medical import balanced_test_set, label_codes
from debiascl.errors import DataError
from debiascl.fairness.metrics import fairness_report
from debiascl.missing import missing_or_blank_mask

MARKERS = {
    "None": None,
    "pd.NA": pd.NA,
    "NaN": float("nan"),
    "pd.NaT": pd.NaT,
    "empty string": "",
    "blank string": "  ",
}


@pytest.mark.parametrize("name", list(MARKERS))
def test_manifest_column_codes_every_marker_as_missing(name):
    values = ["F", "M", MARKERS[name], "F", "M"]
    codes, vocab = encode_column(np.array(values, dtype=object), "sex", None, "test")
    assert vocab == {"F": 0, "M": 1}
    assert codes.tolist() == [0, 1, -1, 0, 1]
    # the same through a vocabulary built on training data
    codes2, _ = encode_column(np.array(values, dtype=object), "sex", vocab, "test")
    assert codes2.tolist() == [0, 1, -1, 0, 1]


def test_manifest_and_fairness_report_agree_on_missing():
    """A row the manifest codes -1 is the row fairness_report counts in n_missing."""
    sex = np.array(["F", "M", " ", "F", "M", "", "F", "M"], dtype=object)
    codes, _ = encode_column(sex, "sex", None, "test")
    rep = fairness_report(
        np.linspace(0.1, 0.9, 8), np.array([0, 1] * 4), {"sex": sex}, 0.5, min_groups=2
    )
    assert rep["attributes"]["sex"]["n_missing"] == int((codes == -1).sum()) == 2
    assert missing_or_blank_mask(sex).tolist() == (codes == -1).tolist()


@pytest.mark.parametrize("name", list(MARKERS))
def test_finding_labels_treat_every_marker_as_blank(name):
    raw = [1.0, 0.0, -1.0, MARKERS[name], "1"]
    assert label_codes(raw).tolist() == [1, 0, -1, 0, 1]
    assert label_codes(raw, blank="ignore").tolist() == [1, 0, -1, -1, 1]


def test_finding_label_typo_is_an_error_not_a_blank():
    with pytest.raises(DataError, match="1, 0, -1 or blank.*maybe"):
        label_codes(["1", "maybe", ""])


def test_balanced_test_set_leaves_blank_groups_out():
    rng = np.random.default_rng(0)
    n = 200
    sex = rng.choice(["F", "M", " "], n, p=[0.45, 0.45, 0.1]).astype(object)
    df = pd.DataFrame({"path": [f"i{i}.png" for i in range(n)], "sex": sex})
    df["Edema"] = rng.choice([1, 0], n)
    out, summary = balanced_test_set(df, ["Edema"], ["sex"], 10, seed=0)
    assert summary["groups"] == ["sex=F", "sex=M"]
    assert set(out["sex"]) == {"F", "M"}
