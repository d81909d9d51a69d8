"""End-to-end training on built-in digits: run directory contents, evaluation, both modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from debiascl.cli import main


def _read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_simclr_run_writes_everything_and_beats_random_init(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "simclr"
    code = main(["train", "digits_simclr", "--run-dir", str(run), "train.epochs=3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "reference: random_init" in out and "reference: raw_pixels" in out
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file()
    assert list(run.glob("events.out.tfevents*"))
    assert list((run / "checkpoints").glob("*.pt"))
    records = _read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["loss"] < records[0]["loss"]
    summary = json.loads((run / "summary.json").read_text())
    trained = summary["knn"]["accuracy"]
    random_init = summary["references"]["random_init"]["knn"]["accuracy"]
    assert trained > random_init
    assert set(summary["linear_probe"]) == {"100%", "10%"}


def test_clip_run_reports_zero_shot_and_retrieval(tmp_path: Path) -> None:
    run = tmp_path / "clip"
    assert main(["train", "digits_clip", "--run-dir", str(run), "train.epochs=3"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    # ten classes: a working zero-shot classifier is far above 10% chance
    assert summary["zero_shot"]["accuracy"] > 0.3
    assert 0 <= summary["retrieval"]["image_to_text"]["R@1"] <= 1
    assert (
        summary["retrieval"]["image_to_text"]["R@10"]
        >= summary["retrieval"]["image_to_text"]["R@1"]
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.name=sogclr", "negatives.name=glofnd", "negatives.init=batch_quantile"],
        ["negatives.name=fnc"],
        ["loss.name=dcl", "loss.temperature=0.5"],
        ["train.amp=bf16"],
    ],
    ids=["sogclr+glofnd", "fnc", "dcl", "bf16-autocast"],
)
def test_methods_train_through_the_cli(tmp_path: Path, overrides: list[str]) -> None:
    run = tmp_path / "m"
    args = [
        "train",
        "digits_simclr",
        "--run-dir",
        str(run),
        "--no-eval",
        "train.epochs=1",
        "train.batch_size=128",
    ]
    assert main(args + overrides) == 0
    record = _read_metrics(run)[-1]
    assert "negatives/removed_fraction" in record
    if "negatives.name=fnc" in overrides:
        assert record["negatives/removed_fraction"] > 0


def test_ssd_run_writes_its_eta_summary(tmp_path: Path) -> None:
    run = tmp_path / "ssd"
    args = [
        "train",
        "digits_clip",
        "--run-dir",
        str(run),
        "--no-eval",
        "train.epochs=1",
        "loss.name=ssd",
        "loss.eta_source=corpus_lm",
        f"loss.eta_cache_dir={tmp_path}",
    ]
    assert main(args) == 0
    summary = json.loads((run / "eta_summary.json").read_text())
    assert summary["method"] == "ssd" and summary["count"] == 1347
    assert 0 <= summary["min"] <= summary["mean"] <= summary["max"] < 1
