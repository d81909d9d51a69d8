"""`debiascl report` groups runs by their config in today's spelling: a run saved before the
per-method sections (flat ``negatives.lr``, ``loss.gamma``, no newer keys) and one saved after,
of the same setting, are one row (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from debiascl.config import dump_config, load_config
from debiascl.report.aggregate import _setting_key, aggregate_runs, markdown_table
from debiascl.report.runs import group_runs, load_run_data


def _new_spelling(tmp_path: Path, seed: int) -> dict:
    cfg = load_config("fmnist_simclr_glofnd", [f"seed={seed}", f"output_dir={tmp_path}"])
    path = tmp_path / "resolved.yaml"
    dump_config(cfg, path)
    return yaml.safe_load(path.read_text())


def _old_spelling(config: dict) -> dict:
    """The same resolved config as a run saved it before the per-method sections."""
    old = json.loads(json.dumps(config))
    old["negatives"].update(old["negatives"].pop("glofnd"))  # negatives.glofnd.lr -> .lr
    old["loss"].update(old["loss"].pop("sogclr"))  # loss.sogclr.gamma -> loss.gamma
    del old["negatives"]["start_agreement"]  # a key added since
    return old


def _run_dir(root: Path, name: str, config: dict, lp: float) -> Path:
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "summary.json").write_text(json.dumps({"linear_probe": {"10%": {"mean": lp}}}))
    return run


def test_old_and_new_spelling_of_one_setting_are_one_group(tmp_path: Path) -> None:
    new = _new_spelling(tmp_path, seed=0)
    old = _old_spelling(_new_spelling(tmp_path, seed=1))
    assert "lr" in old["negatives"] and "glofnd" not in old["negatives"]
    assert _setting_key(dict(new, seed=1)) != _setting_key(old)  # the raw files differ
    runs = [_run_dir(tmp_path, "new_s0", new, 0.70), _run_dir(tmp_path, "old_s1", old, 0.80)]

    groups = aggregate_runs(runs)
    assert len(groups) == 1
    assert groups[0]["seeds"] == [0, 1]
    lp = groups[0]["metrics"]["linear_probe/10%"]
    assert lp["n"] == 2 and abs(lp["mean"] - 0.75) < 1e-12
    assert "| 2 (0,1) |" in markdown_table(groups)

    grouped = group_runs([load_run_data(r) for r in runs])  # the HTML report's grouping
    assert [g.seeds for g in grouped] == [[0, 1]]
    # the configs it shows are in today's spelling
    shown = grouped[0].runs[1].config["negatives"]
    assert shown["glofnd"]["lr"] == new["negatives"]["glofnd"]["lr"] and "lr" not in shown


def test_a_different_setting_in_old_spelling_stays_apart(tmp_path: Path) -> None:
    new = _new_spelling(tmp_path, seed=0)
    old = _old_spelling(_new_spelling(tmp_path, seed=1))
    old["negatives"]["lr"] = 0.01  # another threshold step size: another setting
    runs = [_run_dir(tmp_path, "new_s0", new, 0.70), _run_dir(tmp_path, "old_s1", old, 0.80)]
    groups = aggregate_runs(runs)
    assert len(groups) == 2
    # same name: told apart by the key in which they differ, in today's spelling
    assert any("negatives.glofnd.lr=0.01" in g["label"] for g in groups)


def test_a_config_that_no_longer_validates_still_reports(tmp_path: Path) -> None:
    old = _new_spelling(tmp_path, seed=0)
    old["negatives"]["removed_setting"] = 1  # unknown today: grouped by the saved mapping
    groups = aggregate_runs([_run_dir(tmp_path, "gone", old, 0.5)])
    assert len(groups) == 1 and groups[0]["seeds"] == [0]
