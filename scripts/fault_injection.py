#!/usr/bin/env python
"""Fault injection: SIGKILL a training run at random moments, resume it, compare with no faults.

1. Trains a tiny digits run (subprocess, ``debiascl train ... --no-eval``) without faults.
2. Starts the same run again and kills it with SIGKILL ``--kills`` times, each time resuming with
   ``--resume latest``. Every other kill is aimed at a checkpoint write: the environment variable
   ``DEBIASCL_FAULT_WRITE_DELAY`` makes the writer pause between fsync and rename, and the
   script kills the process as soon as a temporary checkpoint file appears. The other kills land
   at uniformly random times.
3. After every kill it opens every checkpoint in the run directory (none may be unreadable), and
   at the end it checks that the final checkpoint (model, optimiser, per-sample tables, scheduler)
   and the epoch log equal those of the uninterrupted run, bit for bit.

Prints the number of kills survived; exits 1 on any failure. A short version runs in the test
suite (``tests/test_reliability_fault_injection.py``)::

    python scripts/fault_injection.py --kills 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from debiascl.train import checkpoint as ckpt
from debiascl.train.atomic import FAULT_DELAY_ENV, is_temp_file

#: 256 digits, batch 32, 3 epochs = 24 steps; a checkpoint every 2 steps.
RUN_OVERRIDES = [
    "data.train_size=256",
    "train.batch_size=32",
    "train.epochs=3",
    "model.width=4",
    "model.proj_hidden_dim=32",
    "model.embed_dim=16",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
    "train.threads=1",
]
TIMING = {"images_per_second", "epoch_seconds"}


def _command(config: str, run_dir: Path, overrides: list[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "debiascl.cli", "train", config, "--run-dir", str(run_dir)]
    cmd += ["--no-eval", *overrides]
    if resume:
        cmd += ["--resume", "latest"]
    return cmd


def _env(write_delay: float) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env[FAULT_DELAY_ENV] = str(write_delay)
    return env


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _check_readable(run_dir: Path) -> tuple[int, list[str]]:
    """Open every checkpoint (periodic and best); return (count, names of unreadable ones)."""
    directory = run_dir / "checkpoints"
    files = ckpt.list_checkpoints(directory)
    if (directory / ckpt.BEST_NAME).is_file():
        files.append(directory / ckpt.BEST_NAME)
    bad = []
    for path in files:
        try:
            ckpt.load_checkpoint(path)
        except Exception as err:  # report every failure, whatever its type
            bad.append(f"{path.name}: {err}")
    return len(files), bad


def _temp_files(run_dir: Path) -> set[str]:
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if is_temp_file(p)}


def _final_state(run_dir: Path) -> dict[str, Any]:
    path = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    state = ckpt.load_checkpoint(path)
    keys = ("model", "objective", "optimizer", "scheduler", "scaler", "epoch", "step", "batch")
    return {"name": path.name, **{k: state[k] for k in keys}}


def run_fault_injection(
    workdir: Path,
    kills: int = 10,
    seed: int = 0,
    config: str = "digits_simclr",
    extra_overrides: list[str] | None = None,
    write_delay: float = 0.25,
    log: Any = print,
) -> dict[str, Any]:
    """Run the experiment in ``workdir``; returns a result mapping (``ok`` says it passed)."""
    rng = random.Random(seed)
    overrides = [*RUN_OVERRIDES, *(extra_overrides or [])]
    ref_dir, run_dir = workdir / "reference", workdir / "faulty"
    for d in (ref_dir, run_dir):
        shutil.rmtree(d, ignore_errors=True)

    t0 = time.perf_counter()
    ref = subprocess.run(
        _command(config, ref_dir, overrides, resume=False),
        env=_env(write_delay),
        capture_output=True,
        text=True,
    )
    duration = time.perf_counter() - t0
    if ref.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{ref.stderr}")
    log(f"reference run: {duration:.1f} s")

    survived = during_write = unreadable_events = 0
    problems: list[str] = []
    rounds: list[tuple[bool, bool]] = []  # (final state identical, epoch log identical)
    attempt = 0
    # A round trains one faulty run to completion. When a run completes before all kills were
    # made (a late kill landed after its last checkpoint), a new round starts from scratch.
    while survived < kills and not problems:
        shutil.rmtree(run_dir, ignore_errors=True)
        finished = False
        while not finished:
            attempt += 1
            resume = bool(ckpt.list_checkpoints(run_dir / "checkpoints"))
            proc = subprocess.Popen(
                _command(config, run_dir, overrides, resume=resume),
                env=_env(write_delay),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            killed = in_write = False
            # Temporaries left by the previous kill are stale (the new process deletes them);
            # only a new one (mkstemp names are unique) means a checkpoint is being written.
            stale = _temp_files(run_dir)

            def writing(stale: set[str] = stale) -> bool:
                return bool(_temp_files(run_dir) - stale)

            if survived < kills:
                aim_at_write = survived % 2 == 1
                deadline = time.perf_counter() + rng.uniform(0.1, 1.0) * duration
                while proc.poll() is None:
                    now = time.perf_counter()
                    if (aim_at_write and writing()) or (not aim_at_write and now >= deadline):
                        in_write = writing()
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        killed = True
                        survived += 1
                        during_write += int(in_write)
                        break
                    time.sleep(0.005)
            _, stderr = proc.communicate()
            if killed:
                count, bad = _check_readable(run_dir)
                if bad:
                    unreadable_events += 1
                    problems.extend(bad)
                where = "during a checkpoint write" if in_write else "not during a write"
                log(
                    f"kill {survived} (round {len(rounds) + 1}): {where}; {count} checkpoint(s) "
                    f"on disk, {len(bad)} unreadable"
                )
                continue
            if proc.returncode != 0:
                problems.append(f"attempt {attempt} exited {proc.returncode}: {stderr.strip()}")
                break
            finished = True
        if finished:
            got, want = _final_state(run_dir), _final_state(ref_dir)
            rounds.append((_equal(got, want), _metrics(run_dir) == _metrics(ref_dir)))
            log(f"round {len(rounds)} completed: identical={rounds[-1]}")

    identical = bool(rounds) and all(r[0] for r in rounds)
    metrics_equal = bool(rounds) and all(r[1] for r in rounds)
    if rounds and not identical:
        problems.append("a final checkpoint differs from the uninterrupted run")
    if rounds and not metrics_equal:
        problems.append("a metrics.jsonl differs from the uninterrupted run")
    ok = identical and metrics_equal and unreadable_events == 0 and not problems
    return {
        "ok": ok,
        "kills": survived,
        "during_write": during_write,
        "rounds": len(rounds),
        "unreadable": unreadable_events,
        "identical": identical,
        "metrics_equal": metrics_equal,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="number of SIGKILLs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--config", default="digits_simclr")
    parser.add_argument("--write-delay", type=float, default=0.25, help="seconds before rename")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="faultinj-"))
    result = run_fault_injection(
        workdir, args.kills, args.seed, args.config, args.overrides, args.write_delay
    )
    print(
        f"survived {result['kills']} SIGKILLs ({result['during_write']} during a checkpoint "
        f"write) over {result['rounds']} completed run(s); unreadable checkpoints: "
        f"{result['unreadable']}; final state identical to the uninterrupted run: "
        f"{result['identical']}; epoch log identical: {result['metrics_equal']}"
    )
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
