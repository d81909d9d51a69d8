"""Two-step training runs (one epoch of 2 batches) through the CLI with each new detector."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from debiascl.cli import main

TWO_STEPS = ["--no-eval", "data.train_size=128", "train.batch_size=64", "train.epochs=1"]


def _last_record(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def _objective_state(run: Path) -> dict:
    ckpt = sorted((run / "checkpoints").glob("*.pt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return next(v for k, v in state.items() if "objective" in k)


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("digits_clip", ["negatives.name=text_sim", "negatives.text_encoder=tfidf"]),
        (
            "digits_clip",
            [
                "negatives.name=text_sim",
                "negatives.text_sim.text_rule=glofnd",
                "negatives.alpha=0.1",
                "negatives.text_encoder=tfidf",
            ],
        ),
        (
            "digits_clip",
            ["negatives.name=stable_glofnd", "negatives.stable_glofnd.init=batch_quantile"],
        ),
        (
            "digits_simclr",
            [
                "negatives.name=stable_glofnd",
                "negatives.stable_glofnd.reference=initial",
                "negatives.stable_glofnd.init=batch_quantile",
                "negatives.alpha=0.1",
            ],
        ),
        (
            "digits_clip",
            [
                "negatives.name=eta_glofnd",
                "negatives.eta_glofnd.init=batch_quantile",
                "loss.name=ssd",
                "loss.ssd.eta_source=corpus_lm",
                "negatives.eta_glofnd.alpha_scale=2",
            ],
        ),
    ],
    ids=["text_fixed", "text_glofnd", "stable_ema", "stable_initial_simclr", "eta_ssd"],
)
def test_two_step_run_trains_and_removes_negatives(tmp_path, config, overrides):
    run = tmp_path / "run"
    extra = [f"loss.ssd.eta_cache_dir={tmp_path}"] if "loss.name=ssd" in overrides else []
    args = ["train", config, "--run-dir", str(run), *TWO_STEPS, *overrides, *extra]
    args += ["negatives.text_diagnostics=true"] if config == "digits_clip" else []
    assert main(args) == 0
    record = _last_record(run)
    assert record["step"] == 2 and math.isfinite(record["loss"])
    assert record["negatives/removed_fraction"] > 0
    if (
        "negatives.name=text_sim" in overrides
        and "negatives.text_sim.text_rule=glofnd" not in overrides
    ):
        # the fixed rule removes exactly the text-agreeing pairs: both diagnostics are 1
        assert record["negatives/text_agreement"] == 1.0
        assert record["negatives/text_recall"] == 1.0
    if "stable_glofnd" in " ".join(overrides):
        state = _objective_state(run)
        assert any(k.startswith("reference_encoder.") for k in state), "reference not saved"


def test_converged_start_rule_runs_through_the_config(tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "digits_simclr",
        "--run-dir",
        str(run),
        *TWO_STEPS,
        "train.epochs=2",
        "negatives.name=glofnd",
        "negatives.start_rule=converged",
        "negatives.update_start_epoch=0",
        "negatives.start_epoch=1",
        "negatives.glofnd.init=batch_quantile",
    ]
    assert main(args) == 0
    # epoch 1 only sets the reference mean: nothing is removed yet in two epochs
    assert _last_record(run)["negatives/removed_fraction"] == 0.0
    state = _objective_state(run)
    start = next(v for k, v in state.items() if k.endswith("start_state"))
    assert float(start[0]) == 0.0 and float(start[2]) == 1.0 and math.isfinite(float(start[1]))
