"""End-to-end training on built-in digits: each method learns (its loss on a fixed batch falls
below the step-0 value), mixed precision really runs in bf16, and the CLI run directory holds
a model that beats its random initialisation and chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from debiascl.cli import main
from debiascl.compose import build_data
from debiascl.config import load_config
from debiascl.data.build import make_loader
from debiascl.losses.infonce import clip_loss, nt_xent
from debiascl.train.trainer import Trainer

FAST = ["data.train_size=512", "train.batch_size=128", "train.epochs=2", "train.log_every=1000"]


def _read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _fixed_batch(trainer: Trainer) -> dict:
    loader = make_loader(trainer.data.train, 128, train=False, seed=0)
    return next(iter(loader))


def _fixed_batch_loss(trainer: Trainer, batch: dict) -> float:
    """Plain InfoNCE / CLIP loss at the run's temperature, on the same batch and augmentation
    draw: a yardstick independent of the method's own (stateful) objective. Without a working
    update it would not move at all (same inputs, train-mode batch statistics)."""
    torch.manual_seed(1234)
    with torch.no_grad():
        a, b = trainer._embed(batch)
    if trainer.cfg.data.mode == "image_image":
        return float(nt_xent(a, b, trainer.cfg.loss.temperature))
    return float(clip_loss(a, b, 1.0 / trainer.cfg.loss.temperature))


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("digits_simclr", []),
        (
            "digits_simclr",
            [
                "loss.name=sogclr",
                "negatives.name=glofnd",
                "negatives.alpha=0.05",
                "negatives.glofnd.init=batch_quantile",
            ],
        ),
        ("digits_simclr", ["negatives.name=fnc", "negatives.alpha=0.05"]),
        ("digits_simclr", ["loss.name=dcl", "loss.temperature=0.5"]),
        ("digits_simclr", ["loss.name=hcl"]),
        ("digits_clip", []),
    ],
    ids=["infonce", "sogclr+glofnd", "fnc", "dcl", "hcl", "clip"],
)
def test_each_method_lowers_the_loss_of_a_fixed_batch(tmp_path, config, overrides):
    trainer = Trainer(load_config(config, [*FAST, *overrides]), run_dir=tmp_path)
    batch = _fixed_batch(trainer)
    before = _fixed_batch_loss(trainer, batch)
    trainer.fit(evaluate=False)
    after = _fixed_batch_loss(trainer, batch)
    assert after < 0.97 * before, (before, after)
    records = _read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    if "negatives.name=fnc" in overrides or "negatives.name=glofnd" in overrides:
        # both detectors aim at removing the top alpha = 5% of each anchor's negatives
        assert 0.025 < records[-1]["negatives/removed_fraction"] < 0.1
    else:
        assert records[-1]["negatives/removed_fraction"] == 0


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("'off'", torch.float32)])
def test_amp_setting_is_the_precision_the_layers_ran_in(tmp_path, amp, dtype):
    trainer = Trainer(
        load_config("digits_simclr", [*FAST, "train.epochs=1", f"train.amp={amp}"]), tmp_path
    )
    seen: set[torch.dtype] = set()
    for module in trainer.model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            module.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    before = _fixed_batch_loss(trainer, _fixed_batch(trainer))
    seen.clear()
    trainer.fit(evaluate=False)
    assert seen == {dtype}
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32
    assert _fixed_batch_loss(trainer, _fixed_batch(trainer)) < before


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
    assert trained > random_init + 0.05
    assert summary["linear_probe"]["100%"]["mean"] > 0.5  # ten classes: chance is 0.1


def test_clip_run_reports_zero_shot_and_retrieval_far_above_chance(tmp_path: Path) -> None:
    run = tmp_path / "clip"
    assert main(["train", "digits_clip", "--run-dir", str(run), "train.epochs=3"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    # ten classes: a working zero-shot classifier is far above 10% chance
    assert summary["zero_shot"]["accuracy"] > 0.3
    cfg = load_config("digits_clip")
    pairs = len(build_data(cfg.data, cfg.seed).test)
    for direction in ("image_to_text", "text_to_image"):
        recall = summary["retrieval"][direction]
        assert recall["R@1"] > 5 / pairs  # chance R@1 is 1/pairs
        assert recall["R@10"] > recall["R@1"]


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
        "loss.ssd.eta_source=corpus_lm",
        f"loss.ssd.eta_cache_dir={tmp_path}",
    ]
    assert main(args) == 0
    summary = json.loads((run / "eta_summary.json").read_text())
    assert summary["method"] == "ssd" and summary["count"] == 1347
    # eta are probabilities of captions under a corpus LM: spread out, not one constant
    assert 0 < summary["min"] < summary["max"] < 1
