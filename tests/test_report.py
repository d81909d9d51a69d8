"""`debiascl report`: grouping runs by setting and mean ± std over seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from debiascl.cli import main
from debiascl.config import load_config
from debiascl.errors import DataError
from debiascl.report import aggregate_runs, markdown_table, mean_std, metric_at


def _fake_run(root: Path, name: str, seed: int, lr: float, lp: float, knn: float) -> Path:
    run = root / f"{name}_s{seed}"
    run.mkdir()
    cfg = load_config("digits_simclr", [f"seed={seed}", f"name={name}", f"optim.lr={lr}"])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    summary = {"linear_probe": {"100%": {"mean": lp, "std": 0.0}}, "knn": {"accuracy": knn}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_groups_by_setting_and_averages_over_seeds(tmp_path: Path) -> None:
    a = [
        _fake_run(tmp_path, "a", s, 0.001, lp, kn)
        for s, lp, kn in ((0, 0.8, 0.7), (1, 0.9, 0.75), (2, 0.85, 0.8))
    ]
    b = [_fake_run(tmp_path, "b", 0, 0.01, 0.5, 0.4)]
    groups = aggregate_runs(a + b)
    assert len(groups) == 2
    ga = next(g for g in groups if g["label"] == "a")
    assert sorted(ga["seeds"]) == [0, 1, 2]
    lp = ga["metrics"]["linear_probe/100%"]
    assert lp["mean"] == pytest.approx(statistics.fmean([0.8, 0.9, 0.85]))
    assert lp["std"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.85]))
    table = markdown_table(groups)
    assert "| a | 85.0 ± 5.0 |" in table
    assert "| b | 50.0 ± 0.0 |" in table


def test_cli_report_and_unfinished_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _fake_run(tmp_path, "a", 0, 0.001, 0.8, 0.7)
    assert main(["report", str(run), "--json", str(tmp_path / "agg.json")]) == 0
    assert "| a |" in capsys.readouterr().out
    assert json.loads((tmp_path / "agg.json").read_text())[0]["label"] == "a"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not a finished run"):
        aggregate_runs([empty])
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("debiascl: error:") and err.count("\n") == 1


def test_metric_at_and_mean_std() -> None:
    tree = {"a": {"b": 0.5, "flag": True}, "n": 3}
    assert metric_at(tree, "a/b") == 0.5 and metric_at(tree, "n") == 3.0
    assert math.isnan(metric_at(tree, "a/missing")) and math.isnan(metric_at(tree, "a/flag"))
    m, s = mean_std([1.0, 2.0, math.nan, 4.0])
    assert m == pytest.approx(statistics.fmean([1, 2, 4]))
    assert s == pytest.approx(statistics.stdev([1, 2, 4]))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([math.nan]))
