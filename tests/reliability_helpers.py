"""Shared helpers for the reliability/resume/CLI tests: tiny digits runs in-process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import torch

from debiascl.config import load_config
from debiascl.train.trainer import RunInterrupted, Trainer

#: 256 digits, batch 32: 8 steps per epoch, a few seconds per run on one CPU thread.
TINY = [
    "data.train_size=256",
    "train.batch_size=32",
    "train.epochs=3",
    "train.log_every=1000",
    "model.width=4",
    "model.proj_hidden_dim=32",
    "model.embed_dim=16",
    "checkpoint.keep_last=100",
]

#: Log fields that measure time, not training.
TIMING = {"images_per_second", "epoch_seconds"}


def make_trainer(
    run_dir: Path, overrides: list[str] = (), config: str = "digits_simclr"
) -> Trainer:
    cfg = load_config(config, [*TINY, *overrides])
    return Trainer(cfg, run_dir=run_dir)


def run(run_dir: Path, overrides: list[str] = (), config: str = "digits_simclr") -> Trainer:
    trainer = make_trainer(run_dir, overrides, config)
    trainer.fit(evaluate=False)
    return trainer


def signal_during_step(trainer: Trainer, stop_after: int, signum: int = signal.SIGUSR1) -> None:
    """Make ``trainer`` send this process ``signum`` at the end of its ``stop_after``-th train
    step (1-based, counting the steps after this call): a real signal, handled as a stop."""
    original = trainer.train_step
    calls = {"n": 0}

    def step(batch: dict[str, Any], ctx: Any) -> dict[str, float]:
        out = original(batch, ctx)
        calls["n"] += 1
        if calls["n"] == stop_after:
            os.kill(os.getpid(), signum)
        return out

    trainer.train_step = step  # type: ignore[method-assign]


def run_until_signal(
    run_dir: Path,
    stop_after: int,
    overrides: list[str] = (),
    config: str = "digits_simclr",
    signum: int = signal.SIGUSR1,
) -> RunInterrupted:
    """Train and send ourselves ``signum`` during step ``stop_after`` (1-based); expect a stop."""
    trainer = make_trainer(run_dir, overrides, config)
    signal_during_step(trainer, stop_after, signum)
    try:
        trainer.fit(evaluate=False)
    except RunInterrupted as err:
        assert trainer.state.step == stop_after
        return err
    raise AssertionError("the run was not interrupted")


def tensors_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Model parameters/buffers and every per-sample table of the objective (and adversary)."""
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out.update(
        {
            f"objective.{k}": v.detach().clone()
            for k, v in trainer.objective.state_dict().items()
            if isinstance(v, torch.Tensor)
        }
    )
    return out


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), f"{key} differs"


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


# ------------------------------------------------------------------ real processes
def cli_train(
    run_dir: Path, overrides: list[str] = (), config: str = "digits_simclr", **popen: Any
) -> Any:
    """Start ``debiascl train`` (TINY settings, no evaluation) as its own process group."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "debiascl.cli", "train", config, "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [*args, "--no-eval", *TINY, *overrides],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


def wait_for(condition: Any, proc: Any, timeout: float = 120.0, poll: float = 0.005) -> None:
    """Poll ``condition()`` until true; fail if ``proc`` exits first or time runs out."""
    import time

    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"the run ended (rc {proc.returncode}) first: {err[-2000:]}")
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(poll)


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Model parameters and objective tables of a checkpoint file (as :func:`tensors_of`)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update(
        {f"objective.{k}": v for k, v in state["objective"].items() if isinstance(v, torch.Tensor)}
    )
    return out
