"""Papercuts a new user hit, each now a one-line error or a visible line: text settings in an
image-image run, resuming a finished run, GloFND thresholds that cannot move in a short run, and
no process-wide offline switch set by the CLI."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from cli_helpers import SMALL, cli, one_line_error
from debiascl.compose.run_checks import warn_if_thresholds_cannot_move
from debiascl.config import load_config

TINY = [*SMALL, "data.train_size=64", "data.test_size=40", "train.epochs=1"]


def _train(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "digits_simclr",
        "--run-dir",
        str(tmp_path / "run"),
        "--no-eval",
        *TINY,
        *extra,
    ]


@pytest.mark.parametrize(
    "override",
    [
        "model.text_encoder=bag_of_words",
        "model.text_max_length=32",
        "eval.retrieval_ks=[1,2]",
        "eval.zero_shot_templates=['a {} drawn small']",
    ],
)
def test_text_settings_in_an_image_image_run_are_refused(capsys, tmp_path, override):
    code, _, err = cli(capsys, _train(tmp_path, override))
    assert code == 2
    one_line_error(err, override.split("=")[0], "data.mode=image_image", "data.mode=image_text")
    assert not (tmp_path / "run").exists()  # refused before any work


def _event_files(run: Path) -> list[Path]:
    return sorted(run.glob("events.out.tfevents*"))


def test_resuming_a_finished_run_says_so_and_writes_nothing(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, _train(tmp_path))[0] == 0
    events, metrics = _event_files(run), (run / "metrics.jsonl").read_text()
    assert len(events) == 1
    code, out, _ = cli(capsys, [*_train(tmp_path), "--resume", "latest"])
    assert code == 0
    assert (
        "run already complete at epoch 1; nothing to train (use eval, or raise train.epochs)"
        in (out)
    )
    assert _event_files(run) == events  # no new TensorBoard event file
    assert (run / "metrics.jsonl").read_text() == metrics
    # raising train.epochs continues the run as before
    code, out, _ = cli(capsys, [*_train(tmp_path, "train.epochs=2"), "--resume", "latest"])
    assert code == 0 and "already complete" not in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_glofnd_init_one_in_a_too_short_run_warns_in_one_line(capsys, tmp_path):
    # "always": an earlier test in the same process may have shown this warning from the same
    # line, and Python's default filter shows a warning once per location
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = cli(capsys, _train(tmp_path, "negatives.name=glofnd", "train.max_steps=2"))
    assert code == 0
    lines = [line for line in err.splitlines() if "init=one" in line]
    assert len(lines) == 1 and lines[0].startswith("debiascl: warning: "), err
    assert "remove (almost) nothing" in lines[0] and "init=batch_quantile" in lines[0]


@pytest.mark.parametrize(
    ("overrides", "epochs", "warns"),
    [
        (["negatives.name=glofnd"], 1, True),  # one Adam step of 0.05: stays at 0.95
        (["negatives.name=glofnd"], 2, False),  # can reach 0.9
        (["negatives.name=glofnd", "negatives.update_start_epoch=3"], 4, True),
        (["negatives.name=glofnd", "negatives.glofnd.init=batch_quantile"], 1, False),
        (["negatives.name=glofnd", "negatives.glofnd.optimizer=sgd"], 20, True),  # 20 x 0.05 x 0.05
        (["negatives.name=stable_glofnd"], 1, True),
        (["negatives.name=fnc"], 1, False),
    ],
)
def test_threshold_warning_follows_the_largest_possible_move(overrides, epochs, warns):
    cfg = load_config("digits_simclr", overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_thresholds_cannot_move(cfg, epochs)
    assert bool(caught) == warns, [str(w.message) for w in caught]


def test_cli_does_not_switch_the_process_offline(capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert cli(capsys, ["configs"])[0] == 0
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
