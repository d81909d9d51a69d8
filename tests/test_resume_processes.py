"""Exact resume and pre-emption with real processes and real signals (``debiascl train``).

* SIGKILL at a random step, with 0, 1 and 2 data-loader workers: the resumed run ends with
  bit-identical weights, per-sample tables (SogCLR u, GloFND lambda) and metrics.jsonl to the
  uninterrupted run.
* SIGTERM to the whole process group (as SLURM pre-emption sends it) with a loader worker:
  the run checkpoints, exits 143 without a traceback, leaves no process behind, and resumes
  exactly.
"""

from __future__ import annotations

import os
import random
import signal

import pytest
import torch

from debiascl.train import checkpoint as ckpt
from reliability_helpers import (
    assert_identical,
    checkpoint_tensors,
    cli_train,
    metrics,
    wait_for,
)

#: 192 samples, batch 32: 6 steps per epoch, 2 epochs; per-sample tables that move every step.
SMALL = [
    "data.train_size=192",
    "train.epochs=2",
    "loss.name=sogclr",
    "negatives.name=glofnd",
    "negatives.alpha=0.1",
]
STEPS_PER_EPOCH, TOTAL = 6, 12


def _finish(proc, timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _newest_step(run_dir) -> int:
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    return int(found[-1].name.split("step")[1][:8]) if found else -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (0 workers): final weights + tables, and its metrics."""
    run_dir = tmp_path_factory.mktemp("ref")
    code, _, err = _finish(cli_train(run_dir, SMALL))
    assert code == 0, err
    last = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    assert last.name == ckpt.checkpoint_name(2, TOTAL)
    return checkpoint_tensors(last), metrics(run_dir)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, reference, workers):
    rng = random.Random(100 + workers)
    kill_after = rng.choice([2, 3, 4, 7, 8, 9])  # a step checkpoint inside epoch 1 or 2
    overrides = [*SMALL, f"data.num_workers={workers}", "checkpoint.every_steps=1"]
    proc = cli_train(tmp_path, overrides)
    wait_for(lambda: _newest_step(tmp_path) >= kill_after, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # whatever it is doing now: a step or a write
    code, _, _ = _finish(proc)
    assert code == -signal.SIGKILL
    state = torch.load(
        ckpt.list_checkpoints(tmp_path / "checkpoints")[-1], map_location="cpu", weights_only=True
    )
    assert 0 < state["batch"] < STEPS_PER_EPOCH, "the kill did not land mid-epoch"
    assert state["step"] < TOTAL

    code, _, err = _finish(cli_train(tmp_path, [*overrides, "checkpoint.resume=latest"]))
    assert code == 0, err
    ref_tensors, ref_metrics = reference
    final = ckpt.list_checkpoints(tmp_path / "checkpoints")[-1]
    assert final.name == ckpt.checkpoint_name(2, TOTAL)
    assert_identical(checkpoint_tensors(final), ref_tensors)
    # each epoch logged once, with the same losses, lr and FN precision/recall
    assert metrics(tmp_path) == ref_metrics


@pytest.mark.timeout(300)
def test_sigterm_to_the_process_group_checkpoints_and_exits_143(tmp_path, reference):
    overrides = [*SMALL, "data.num_workers=1", "checkpoint.every_steps=4"]
    proc = cli_train(tmp_path, overrides)
    wait_for(lambda: _newest_step(tmp_path) >= 4, proc)  # training (and its worker) running
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and its loader worker
    code, _, err = _finish(proc)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "stopped by SIGTERM" in err and "--resume latest" in err
    assert len(err.strip().splitlines()) == 1, err
    with pytest.raises(ProcessLookupError):  # no worker left behind in the group
        os.killpg(proc.pid, 0)
    state = torch.load(
        ckpt.list_checkpoints(tmp_path / "checkpoints")[-1], map_location="cpu", weights_only=True
    )
    assert 4 <= state["step"] < TOTAL  # the pre-emption checkpoint (not the end of the run)

    code, _, err = _finish(cli_train(tmp_path, [*overrides, "checkpoint.resume=latest"]))
    assert code == 0, err
    ref_tensors, ref_metrics = reference
    final = ckpt.list_checkpoints(tmp_path / "checkpoints")[-1]
    assert_identical(checkpoint_tensors(final), ref_tensors)
    assert metrics(tmp_path) == ref_metrics
