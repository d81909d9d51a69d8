"""The main job (`debiascl demo --quick`) end to end on Fashion-MNIST, two methods."""

from __future__ import annotations

import json
from pathlib import Path

from debiascl.demo import results_table, run_demo, text_table


def test_quick_demo_prints_references_and_methods(tmp_path: Path, capsys) -> None:
    text = run_demo(tmp_path, quick=True, methods=["none", "glofnd"])
    out = capsys.readouterr().out
    assert text in out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "model",
        "reference: random_init",
        "reference: raw_pixels",
        "SimCLR (no filtering)",
        "GloFND",
        "model",
        "CLIP-style SogCLR (no filtering)",
        "GloFND",
    ]
    assert "| model | zero-shot | LP 10% |" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["methods"]["GloFND"]["fn_detection"]["removed_fraction"] > 0
    image_text = results["image_text"]
    assert image_text["GloFND"]["fn_detection"]["removed_fraction"] > 0
    assert (tmp_path / "results.md").read_text().startswith(text)
    assert (tmp_path / "image_text" / "report.html").is_file()
    # the HTML report of both runs, its path printed
    assert f"report: {tmp_path / 'report.html'}" in out
    page = (tmp_path / "report.html").read_text()
    assert 'data-plot="removed_fraction"' in page and 'data-plot="lambda_image"' in page
    # a second run into the same folder replaces the first instead of refusing
    run_demo(tmp_path, quick=True, methods=["none"])


def test_results_table_hides_undefined_detection_scores() -> None:
    table = results_table(
        [
            (
                "plain",
                {
                    "knn": {"accuracy": 0.5},
                    "fn_detection": {"removed_fraction": 0.0, "recall": 0.0},
                },
            ),
            (
                "filtered",
                {
                    "fn_detection": {"removed_fraction": 0.05, "precision": 0.5, "recall": 0.25},
                    "train_seconds": 12.3,
                },
            ),
        ]
    )
    plain, filtered = table.splitlines()[2:]
    assert plain == "| plain | - | - | - | 50.0 | - | - | - | - |"
    assert filtered == "| filtered | - | - | - | - | 50.0 | 25.0 | 5.0 | 12 |"


def test_text_table_shows_zero_shot_and_probe_next_to_detection() -> None:
    table = text_table(
        [
            (
                "text evidence",
                {
                    "zero_shot": {"accuracy": 0.571},
                    "linear_probe": {"10%": {"mean": 0.609, "std": 0.0}},
                    "fn_detection": {"removed_fraction": 0.119, "precision": 0.923, "recall": 0.98},
                    "train_seconds": 61.4,
                },
            ),
            ("plain", {"zero_shot": {"accuracy": 0.551}}),
        ]
    )
    header, rule, row, plain = table.splitlines()
    assert header == "| model | zero-shot | LP 10% | FN precision | FN recall | removed | train s |"
    assert rule == "|---" * 7 + "|"
    assert row == "| text evidence | 57.1 | 60.9 | 92.3 | 98.0 | 11.9 | 61 |"
    assert plain == "| plain | 55.1 | - | - | - | - | - |"
