"""`debiascl report RUN... -o report.html`: every section and plot, seeds aggregated, missing
data noted instead of plotted, the Markdown path kept, a one-line error without matplotlib."""

from __future__ import annotations

import base64
import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

from debiascl.cli import main
from debiascl.config import load_config
from debiascl.eval.embedding_sample import embedding_sample_bytes, load_embedding_sample
from debiascl.eval.features import FeatureSet
from debiascl.report import aggregate_runs, markdown_table
from debiascl.report.audit_sections import group_auc_intervals, group_aucs
from debiascl.report.html import render_report
from debiascl.report.runs import RunData, RunGroup
from debiascl.report.sections import group_curve
from report_helpers import lp_value, parse_page, write_run

# the report's sections, in page order
SECTIONS = [
    "runs",
    "config",
    "results",
    "curves",
    "detection",
    "thresholds",
    "eta",
    "fairness",
    "embeddings",
    "removed_pairs",
]
EXPECTED_PLOTS = {
    "results": ["results"],
    "curves": ["loss", "lr"],
    "detection": ["removed_fraction", "detection_quality"],
    "thresholds": ["lambda_image"],
    "eta": ["eta_histogram", "clamped_fraction"],
    "fairness": ["group_auc_sex"],
    "embeddings": ["embedding_class", "embedding_class", "embedding_sex"],
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str]:
    root = tmp_path_factory.mktemp("runs")
    runs = [write_run(root, "simclr", s) for s in (0, 1, 2)]
    runs += [write_run(root, "clip", s) for s in (0, 1)]
    return runs, render_report(runs)


def test_every_section_and_plot_is_present(generated: tuple[list[Path], str]) -> None:
    _, page = generated
    parsed = parse_page(page)
    assert list(parsed.sections) == SECTIONS
    for section, plots in EXPECTED_PLOTS.items():
        assert parsed.sections[section]["plots"] == plots, section
    assert not any(s["missing"] for s in parsed.sections.values())
    # self-contained: no scripts, no external resources; every image a real, non-blank PNG
    assert parsed.scripts == 0 and parsed.external == []
    assert len(parsed.images) == sum(len(p) for p in EXPECTED_PLOTS.values())
    for src in parsed.images:
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and min(img.size) >= 200
        assert len(np.unique(np.asarray(img.convert("L")))) > 5  # something is drawn
    assert "5 run(s) in 2 setting(s)" in page


def test_seeds_are_aggregated(generated: tuple[list[Path], str]) -> None:
    _, page = generated
    simclr = [lp_value("simclr", s) for s in (0, 1, 2)]
    clip = [lp_value("clip", s) for s in (0, 1)]
    for vals, seeds in ((simclr, "3 (0,1,2)"), (clip, "2 (0,1)")):
        cell = f"{100 * statistics.fmean(vals):.1f} ± {100 * statistics.stdev(vals):.1f}"
        assert f"<td>{cell}</td>" in page
        assert f"<td>{seeds}</td>" in page
    # config differences: what separates the settings, not the seed
    assert "<td>loss.name</td><td>infonce</td><td>ssd</td>" in page
    assert "<td>negatives.name</td><td>glofnd</td><td>none</td>" in page
    assert "<td>seed</td>" not in page


def test_group_curve_is_the_seed_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = []
    table = np.full((3, 5), np.nan)
    for seed in range(3):
        epochs = range(1, 6) if seed < 2 else range(1, 4)  # the third seed stopped early
        metrics = []
        for e in epochs:
            table[seed, e - 1] = rng.normal()
            metrics.append({"epoch": e, "loss": float(table[seed, e - 1])})
        metrics.append({"epoch": 9, "loss": None})  # a null value is skipped, not a point
        runs.append(RunData(tmp_path, {"seed": seed}, {}, metrics=metrics))
    xs, mean, std = group_curve(RunGroup("k", runs), "loss")
    assert xs == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(mean, np.nanmean(table, axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, np.nanstd(table, axis=0, ddof=1), rtol=1e-12)


def test_group_aucs_are_the_class_macro_average(generated: tuple[list[Path], str]) -> None:
    runs, _ = generated
    # rebuild the scores write_run audited (same seeded draws) and score the groups directly
    rng = np.random.default_rng(0)
    n, classes = 300, 10
    labels = rng.integers(0, classes, n)
    scores = rng.random((n, classes)) + 0.3 * np.eye(classes)[labels]
    group = rng.integers(0, 2, n)
    scores = scores / scores.sum(1, keepdims=True)  # as audited
    summary = json.loads((runs[3] / "summary.json").read_text())
    entry = summary["fairness"]["zero_shot"]["fairness"]["attributes"]["sex"]
    got = group_aucs(entry)
    for code, name in ((1, "F"), (0, "M")):
        sel = group == code
        ref = statistics.fmean(
            roc_auc_score(labels[sel] == c, scores[sel, c]) for c in range(classes)
        )
        assert got[name] == pytest.approx(ref, abs=1e-12)
    # per-group intervals: the class macro average of each group's bootstrap interval ends,
    # shown in the fairness table next to the group's AUC
    intervals = group_auc_intervals(entry)
    _, page = generated
    for name in ("F", "M"):
        ends = [t["groups"][name]["auc_ci"] for t in entry["per_class"].values()]
        ref = [statistics.fmean(e[0] for e in ends), statistics.fmean(e[1] for e in ends)]
        assert intervals[name] == pytest.approx(ref, abs=1e-12)
        assert ref[0] < got[name] < ref[1]
        cell = f"<td>{got[name]:.3f}</td><td>[{ref[0]:.3f}, {ref[1]:.3f}]</td>"
        assert cell in page


def test_missing_data_is_noted_not_plotted(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    cfg = load_config("digits_simclr")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (run / "summary.json").write_text(json.dumps({"knn": {"accuracy": 0.5}}))
    parsed = parse_page(render_report([run]))
    for section in (s for s in SECTIONS if s not in ("runs", "results")):
        assert parsed.sections[section]["plots"] == [], section
        assert parsed.sections[section]["missing"], section
    assert parsed.sections["results"]["plots"] == ["results"]
    assert len(parsed.images) == 1


def test_cli_html_markdown_and_missing_extra(
    generated: tuple[list[Path], str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs, _ = generated
    out = tmp_path / "r.html"
    assert main(["report", *map(str, runs[:1]), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert parse_page(out.read_text()).sections["detection"]["plots"]
    md = tmp_path / "r.md"
    assert main(["report", *map(str, runs), "-o", str(md)]) == 0
    expected = markdown_table(aggregate_runs(runs))
    assert md.read_text() == expected + "\n"
    assert expected in capsys.readouterr().out
    # without matplotlib (a real failed import): one line naming the extra, exit 2
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from debiascl.cli import main\n"
        f"sys.exit(main(['report', {str(runs[0])!r}, '-o', {str(tmp_path / 'x.html')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install 'debiascl[report]'" in proc.stderr
    assert not (tmp_path / "x.html").exists()


def test_embedding_sample_is_bounded_and_row_aligned(tmp_path: Path) -> None:
    n = 50
    feats = np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)
    fs = FeatureSet(
        features=torch.as_tensor(feats),
        labels=torch.arange(n) % 3,
        ids=torch.arange(100, 100 + n),
        attrs={"site": torch.arange(n) % 2},
    )
    data = embedding_sample_bytes(fs, max_points=20, seed=3)
    assert data == embedding_sample_bytes(fs, max_points=20, seed=3)
    (tmp_path / "e.npz").write_bytes(data)
    got = load_embedding_sample(tmp_path / "e.npz")
    assert got is not None and len(got["ids"]) == 20 and len(set(got["ids"].tolist())) == 20
    rows = got["ids"] - 100
    np.testing.assert_array_equal(got["features"], feats[rows])
    np.testing.assert_array_equal(got["labels"], rows % 3)
    np.testing.assert_array_equal(got["attrs"][:, 0], rows % 2)
    assert got["attr_names"].tolist() == ["site"]
    assert not math.isnan(float(got["features"].sum()))
