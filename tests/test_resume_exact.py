"""Exact resume: stop a run at a step boundary (mid-epoch included), resume, and end with
bit-identical parameters, per-sample tables and epoch logs to the uninterrupted run (CPU)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from debiascl.train import checkpoint as ckpt
from debiascl.train.trainer import RunInterrupted
from reliability_helpers import (
    assert_identical,
    make_trainer,
    metrics,
    run,
    run_until_signal,
    tensors_of,
)

CASES = {
    "simclr_infonce": ("digits_simclr", []),
    "simclr_glofnd_sogclr": (
        "digits_simclr",
        ["negatives.name=glofnd", "negatives.alpha=0.1", "loss.name=sogclr"],
    ),
    "clip_glofnd": ("digits_clip", ["negatives.name=glofnd", "negatives.alpha=0.1"]),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per case (computed once)."""
    out = {}
    for name, (config, overrides) in CASES.items():
        d = tmp_path_factory.mktemp(f"ref_{name}")
        out[name] = (tensors_of(run(d, overrides, config)), metrics(d))
    return out


@pytest.mark.parametrize(
    ("case", "stop_after"),
    [
        ("simclr_infonce", 3),  # mid-epoch 1
        ("simclr_infonce", 8),  # last step of epoch 1
        ("simclr_infonce", 13),  # mid-epoch 2
        ("simclr_glofnd_sogclr", 5),
        ("simclr_glofnd_sogclr", 17),
        ("clip_glofnd", 11),
    ],
)
def test_stop_and_resume_is_bit_identical(tmp_path, reference, case, stop_after):
    config, overrides = CASES[case]
    err = run_until_signal(tmp_path, stop_after, overrides, config)
    assert err.exit_code == 128 + signal.SIGUSR1
    assert "--resume latest" in str(err)
    resumed = run(tmp_path, [*overrides, "checkpoint.resume=latest"], config)
    ref_tensors, ref_metrics = reference[case]
    assert resumed.state.step == 24
    assert_identical(tensors_of(resumed), ref_tensors)
    # Epoch logs (losses, lr, detection statistics) are identical too, each epoch once.
    assert metrics(tmp_path) == ref_metrics


def test_objective_tables_are_non_trivial(reference):
    """Guard against a vacuous comparison: GloFND/SogCLR tables moved away from their init."""
    tensors, _ = reference["simclr_glofnd_sogclr"]
    tables = {k: v for k, v in tensors.items() if k.startswith("objective.")}
    assert tables, "the objective has no state to compare"
    assert any(float(v.double().abs().sum()) > 0 for v in tables.values())


def test_resume_twice_from_step_checkpoints(tmp_path, reference):
    """Resume from an explicit mid-epoch checkpoint path, stop again, resume again."""
    ref_tensors, ref_metrics = reference["simclr_infonce"]
    run_until_signal(tmp_path, 6, ["checkpoint.every_steps=2"])
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == [
        "epoch0000-step00000002.pt",
        "epoch0000-step00000004.pt",
        "epoch0000-step00000006.pt",
    ]
    # Explicit path to the step-4 checkpoint: steps 5-6 are redone.
    first = str(tmp_path / "checkpoints" / "epoch0000-step00000004.pt")
    trainer = make_trainer(tmp_path, ["checkpoint.every_steps=2", f"checkpoint.resume={first}"])
    calls = {"n": 0}
    original = trainer.train_step

    def step(batch, ctx):
        calls["n"] += 1
        if calls["n"] == 9:  # during global step 13: a real signal to this process
            os.kill(os.getpid(), signal.SIGTERM)
        return original(batch, ctx)

    trainer.train_step = step
    with pytest.raises(Exception) as info:
        trainer.fit(evaluate=False)
    assert getattr(info.value, "exit_code", None) == 128 + signal.SIGTERM
    assert trainer.state.step == 13
    resumed = run(tmp_path, ["checkpoint.every_steps=2", "checkpoint.resume=latest"])
    assert_identical(tensors_of(resumed), ref_tensors)
    assert metrics(tmp_path) == ref_metrics


def test_resume_of_finished_run_changes_nothing(tmp_path, reference):
    ref_tensors, _ = reference["simclr_infonce"]
    run(tmp_path)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    again = run(tmp_path, ["checkpoint.resume=latest"])
    assert_identical(tensors_of(again), ref_tensors)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_checkpoint_holds_every_rng_and_position(tmp_path):
    """The saved RNG states are the ones the process had at the stop (nothing draws between the
    save and the stop), the loader generator is the epoch's starting one, and the running sums
    are the sums of the logged steps."""
    import random

    import numpy as np

    trainer = make_trainer(tmp_path)
    original = trainer.train_step
    losses: list[float] = []

    def step(batch, ctx):
        out = original(batch, ctx)
        losses.append(out["loss"])
        if len(losses) == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    trainer.train_step = step
    with pytest.raises(RunInterrupted):
        trainer.fit(evaluate=False)
    path = ckpt.list_checkpoints(tmp_path / "checkpoints")[-1]
    state = torch.load(path, weights_only=True)  # loads without executing code
    assert (state["epoch"], state["step"], state["batch"]) == (0, 3, 3)
    assert state["format"] == ckpt.FORMAT_VERSION
    rng = state["rng"]
    assert torch.equal(rng["torch"], torch.get_rng_state())
    assert np.array_equal(rng["numpy"]["key"].numpy(), np.random.get_state()[1].astype(np.int64))
    assert rng["numpy"]["pos"] == np.random.get_state()[2]
    assert tuple(rng["python"][1]) == random.getstate()[1]
    if torch.cuda.is_available():
        assert all(map(torch.equal, rng["cuda"], torch.cuda.get_rng_state_all()))
    else:
        assert rng["cuda"] is None
    first_epoch = torch.Generator()
    first_epoch.manual_seed(trainer.cfg.seed)
    assert torch.equal(rng["loader"], first_epoch.get_state())
    assert state["progress"]["count"] == 3
    assert state["progress"]["totals"]["loss"] == pytest.approx(sum(losses), rel=1e-12)
    # the weights are those of step 3, not of the start
    saved = state["model"]
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())
    init = make_trainer(tmp_path / "fresh").model.state_dict()
    assert any(not torch.equal(saved[k], init[k]) for k in init if init[k].is_floating_point())


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process (nothing after it runs)."""


def test_kill_between_epoch_checkpoint_and_log_line(tmp_path, reference, monkeypatch):
    """The epoch-2 checkpoint is on disk but its metrics line is not: resume logs it."""
    from debiascl.train.logging import RunLogger

    ref_tensors, ref_metrics = reference["simclr_infonce"]
    real_epoch = RunLogger.epoch

    def dying_epoch(self, record):
        if record["epoch"] == 2:
            raise _Killed
        real_epoch(self, record)

    monkeypatch.setattr(RunLogger, "epoch", dying_epoch)
    with pytest.raises(_Killed):
        run(tmp_path)
    monkeypatch.setattr(RunLogger, "epoch", real_epoch)
    assert len(metrics(tmp_path)) == 1
    assert ckpt.list_checkpoints(tmp_path / "checkpoints")[-1].name == "epoch0002-step00000016.pt"
    resumed = run(tmp_path, ["checkpoint.resume=latest"])
    assert_identical(tensors_of(resumed), ref_tensors)
    assert metrics(tmp_path) == ref_metrics


def test_torn_and_extra_metrics_lines_are_repaired_on_resume(tmp_path, reference):
    """Records beyond the resumed checkpoint (and a line torn by a kill) are dropped."""
    ref_tensors, ref_metrics = reference["simclr_infonce"]
    run_until_signal(tmp_path, 10)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 2, "step": 16, "loss": 1.0}\n{"epoch": 3, "st')
    resumed = run(tmp_path, ["checkpoint.resume=latest"])
    assert_identical(tensors_of(resumed), ref_tensors)
    assert metrics(tmp_path) == ref_metrics


def test_best_checkpoint_has_the_lowest_epoch_loss(tmp_path):
    trainer = run(tmp_path, ["checkpoint.keep_last=1"])
    losses = [r["loss"] for r in metrics(tmp_path)]
    best = ckpt.load_checkpoint(tmp_path / "checkpoints" / ckpt.BEST_NAME)
    assert best["epoch"] == 1 + losses.index(min(losses))
    assert best["best_loss"] == min(losses)
    # keep_last=1: only the newest periodic checkpoint remains, best.pt survives pruning
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        "epoch0003-step00000024.pt"
    ]
    assert trainer.best_loss == min(losses)
