"""Results tables: flattening, alignment, mean ± std cells, missing values."""

from __future__ import annotations

import pytest

from debiascl.errors import ConfigError
from debiascl.eval import MAIN_COLUMNS, flatten_results, format_table

RESULTS = {
    "trained": {
        "linear_probe": {
            "100%": {"mean": 0.9123, "std": 0.0, "per_seed": [0.9123], "n_train": 60000},
            "10%": {"mean": 0.88, "std": 0.012, "per_seed": [0.87, 0.89]},
            "1%": {"mean": 0.801, "std": 0.02, "per_seed": [0.78, 0.82]},
        },
        "knn": {"accuracy": 0.8567, "top5": 0.99},
    },
    "random init": {
        "linear_probe": {"100%": {"mean": 0.7, "std": 0.0}},
        "knn": {"accuracy": 0.65},
    },
    "raw pixels": {"linear_probe": {"100%": {"mean": 0.84, "std": 0.0}}},
}


def test_flatten_turns_mean_std_dicts_into_cells():
    flat = flatten_results(RESULTS["trained"])
    assert flat["linear_probe/10%"] == (0.88, 0.012)
    assert flat["knn/accuracy"] == (0.8567, None)
    assert not any("per_seed" in k or "n_train" in k for k in flat)


def test_plain_table_is_aligned_with_values_in_percent():
    text = format_table(RESULTS, MAIN_COLUMNS)
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert len({len(line) for line in lines}) == 1, "every line has the same width"
    header = lines[0].split()
    assert header[0] == "model" and "kNN" in header
    trained = lines[2]
    assert trained.startswith("trained")
    assert "91.2" in trained and "88.0 ± 1.2" in trained and "80.1 ± 2.0" in trained
    assert "85.7" in trained
    raw = lines[4]
    assert raw.startswith("raw pixels") and raw.rstrip().endswith("-")
    # Right-aligned numeric columns end at the same character position.
    knn_end = lines[0].index("kNN") + len("kNN")
    assert all(line[:knn_end].endswith(("85.7", "65.0", "-", "kNN")) for line in lines[2:])


def test_default_columns_and_raw_values():
    text = format_table({"m": {"a": {"x": 0.5}, "b": 2}}, percent=False, digits=2)
    assert text.splitlines()[0].split() == ["model", "a/x", "b"]
    assert text.splitlines()[2].split() == ["m", "0.50", "2.00"]


def test_markdown_style():
    text = format_table(RESULTS, MAIN_COLUMNS, style="markdown")
    lines = text.splitlines()
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert len({line.count("|") for line in lines}) == 1
    assert lines[1].replace("|", "").replace("-", "").replace(":", "").strip() == ""
    with pytest.raises(ConfigError):
        format_table(RESULTS, style="html")
