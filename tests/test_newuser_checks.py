"""Checks found by trying the README as a new user: a run without a test split is refused before
training, messages name the keys a user can type, and the Markdown report tells settings apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from cli_helpers import SMALL, cli, one_line_error
from debiascl.config import load_config


def _manifest(root: Path, n: int = 16) -> Path:
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / f"img/{i}.png")
        rows.append({"path": f"img/{i}.png", "label": ["cat", "dog"][i % 2]})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def test_manifest_without_test_split_is_refused_before_training(capsys, tmp_path):
    manifest = _manifest(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "digits_simclr", "--run-dir", str(run), "data.dataset=manifest"]
    code, _, err = cli(capsys, [*argv, f"data.manifest={manifest}", "train.epochs=1", *SMALL])
    assert code == 2
    one_line_error(err, "no test split", "data.test_manifest", "--no-eval")
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def test_ssd_without_a_masked_lm_names_an_override_that_works(capsys, tmp_path):
    argv = ["train", "digits_clip", "--run-dir", str(tmp_path / "run"), "loss.name=ssd", *SMALL]
    code, _, err = cli(capsys, argv)
    assert code == 2
    line = one_line_error(err, "loss.ssd.mlm_path")
    suggested = [w for w in line.split() if "eta_source=" in w]
    assert suggested, line
    # the suggested spelling is an override the config accepts
    cfg = load_config("digits_clip", ["loss.name=ssd", suggested[0].rstrip(".,;")])
    assert cfg.loss.settings["eta_source"] == "corpus_lm"


def _finished_run(root: Path, seed: int, lr: float, lp: float, loss: str = "infonce") -> Path:
    run = root / f"run_{loss}_lr{lr}_s{seed}"
    run.mkdir()
    cfg = load_config("digits_simclr", [f"seed={seed}", f"optim.lr={lr}", f"loss.name={loss}"])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (run / "summary.json").write_text(json.dumps({"knn": {"accuracy": lp}}))
    return run


def test_markdown_report_tells_settings_of_one_name_apart(capsys, tmp_path):
    runs = [
        _finished_run(tmp_path, 0, 0.001, 0.5),
        _finished_run(tmp_path, 1, 0.001, 0.7),
        _finished_run(tmp_path, 0, 0.01, 0.9),
        _finished_run(tmp_path, 0, 0.01, 0.8, loss="dcl"),
    ]
    code, out, err = cli(capsys, ["report", *map(str, runs)])
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| digits_simclr")]
    assert len(rows) == 3
    # every setting is called digits_simclr: the row names the keys they differ in
    assert rows[0].startswith("| digits_simclr (loss.name=infonce, optim.lr=0.001) | 60.0 ±"), rows
    assert rows[1].startswith("| digits_simclr (loss.name=infonce, optim.lr=0.01) | 90.0 ±"), rows
    assert rows[2].startswith("| digits_simclr (loss.name=dcl, optim.lr=0.01) | 80.0 ±"), rows
    assert "60.0 ± 14.1 |" in rows[0]
    # the last column is the number of runs with their seeds, not a bare seed list
    assert rows[0].endswith("| 2 (0,1) |") and rows[1].endswith("| 1 (0) |"), rows


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path):
    # `debiascl eval DIR --debug` (the flag after the command) raises instead of one line
    import pytest

    from debiascl.cli import main
    from debiascl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="is not a run directory"):
        main(["eval", str(tmp_path), "--debug"])
    with pytest.raises(CheckpointError, match="is not a run directory"):
        main(["--debug", "eval", str(tmp_path)])


def test_explorer_of_a_detector_that_removed_nothing_says_so(capsys, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "digits_simclr", "--run-dir", str(run), "--no-eval", *SMALL]
    # GloFND with thresholds starting at 1 removes nothing in its first epoch
    code, _, err = cli(capsys, [*argv, "negatives.name=glofnd", "train.max_steps=2"])
    assert code == 0, err
    code, _, err = cli(capsys, ["explore", str(run)])
    assert code == 2
    one_line_error(err, "negatives.name=glofnd", "removed no negative pair")
    assert "train with a false-negative detector" not in err


def test_cli_warnings_are_one_line_each_once(capsys, monkeypatch):
    import warnings

    import debiascl.cli as cli_module

    def configs(args):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("kNN k=200 exceeds the smallest class", UserWarning, stacklevel=1)
            warnings.warn("kNN k=200 exceeds the smallest class", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli_module, "_cmd_configs", configs)
    before = warnings.showwarning
    assert cli_module.main(["configs"]) == 0
    err = capsys.readouterr().err
    # one line, without the Python source line or file name, and a repeated text shown once
    assert err == "debiascl: warning: kNN k=200 exceeds the smallest class\n", err
    assert warnings.showwarning is before  # a library caller's warnings are left alone


def test_export_to_a_path_that_is_a_file_is_one_line(capsys, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "digits_simclr", "--run-dir", str(run), "--no-eval", *SMALL]
    assert cli(capsys, [*argv, "model.encoder=resnet18", "train.max_steps=1"])[0] == 0
    a_file = tmp_path / "out.yaml"
    a_file.write_text("x")
    code, _, err = cli(capsys, ["export", str(run), "--to", "timm", "-o", str(a_file)])
    assert code == 2
    one_line_error(err, "is a file, not a folder", "-o")
    assert a_file.read_text() == "x"
