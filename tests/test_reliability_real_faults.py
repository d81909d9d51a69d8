"""Real faults instead of patches: a full disk (small tmpfs), a read-only file system, a SIGKILL
during a large checkpoint write, and two runs racing for one run directory.

Mounting needs root (CAP_SYS_ADMIN); where it is not permitted those tests skip and say why.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from debiascl.cli import main
from debiascl.errors import TrainingError
from debiascl.train import checkpoint as ckpt
from reliability_helpers import (
    TINY,
    assert_identical,
    cli_train,
    make_trainer,
    metrics,
    run,
    run_until_signal,
    tensors_of,
    wait_for,
)

SHORT = ["data.train_size=64", "train.batch_size=16"]  # 4 steps per epoch


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    _mount_tmpfs(mnt, "8m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path, leave: int) -> Path:
    """Fill the file system of ``directory`` until ENOSPC, then free ``leave`` bytes."""
    filler = directory / "filler.bin"
    block = b"\0" * (64 * 1024)
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_atomic_write_on_a_full_file_system_keeps_the_previous_file(tmpfs):
    from debiascl.train.atomic import atomic_write

    target = tmpfs / "ckpt.pt"
    target.write_bytes(b"previous")
    too_big = b"x" * (9 * 1024 * 1024)  # more than the 8 MiB file system holds
    with pytest.raises(TrainingError, match="no space left on device; the previous file is"):
        atomic_write(target, lambda fh: fh.write(too_big))
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmpfs.iterdir()) == ["ckpt.pt"]  # no temporary left


def test_disk_full_during_checkpoint_write_keeps_the_previous_one(tmpfs, tmp_path):
    """A real ENOSPC (8 MiB tmpfs) at the epoch-2 checkpoint: a one-line error, the epoch-1
    checkpoint intact and loadable, no temporary file, no epoch-2 log line; with space freed
    the run resumes and ends identical to an uninterrupted run."""
    run_dir = tmpfs / "run"
    # stop after epoch 1 of 2 (a signal, so the learning-rate schedule is that of 2 epochs)
    run_until_signal(run_dir, 4, [*SHORT, "train.epochs=2"])
    first = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    size = first.stat().st_size
    filler = _fill(tmpfs, leave=size // 2)  # room for logs, not for a checkpoint
    with pytest.raises(TrainingError, match="no space left on device; the previous file is") as e:
        make_trainer(run_dir, [*SHORT, "train.epochs=2", "checkpoint.resume=latest"]).fit(
            evaluate=False
        )
    assert "\n" not in str(e.value)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", first.name]  # no temporary file, nothing half-written
    assert ckpt.load_checkpoint(first)["step"] == 4
    assert [m["epoch"] for m in metrics(run_dir)] == [1]

    filler.unlink()
    resumed = run(run_dir, [*SHORT, "train.epochs=2", "checkpoint.resume=latest"])
    reference = run(tmp_path / "ref", [*SHORT, "train.epochs=2"])
    assert_identical(tensors_of(resumed), tensors_of(reference))
    assert metrics(run_dir) == metrics(tmp_path / "ref")


def test_read_only_file_system_gives_one_line_and_changes_nothing(tmpfs, capsys):
    """``mount -o remount,ro``: root ignores permission bits, a read-only mount it cannot."""
    run_dir = tmpfs / "run"
    run(run_dir, [*SHORT, "train.epochs=1"])
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    done = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr!r}")
    base = ["train", "digits_simclr", "--no-eval", *TINY, *SHORT, "train.epochs=2"]
    for target, extra in ((run_dir, ["--resume", "latest"]), (tmpfs / "new", [])):
        capsys.readouterr()
        code = main([*base[:2], "--run-dir", str(target), *base[2:], *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert len(err.splitlines()) == 1, err
        assert "Read-only file system" in err and "writable --run-dir" in err
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == before


_TMP = re.compile(r"^\.epoch\d+-step(\d+)\.pt\..*\.tmp$")


def _temporaries(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    return [(int(m[1]), p) for p in directory.iterdir() if (m := _TMP.match(p.name))]


@pytest.mark.timeout(300)
def test_sigkill_during_a_large_checkpoint_write(tmp_path):
    """26 MB checkpoints every step; SIGKILL as soon as a temporary checkpoint file appears.
    The newest complete checkpoint is an earlier step and loads; resuming removes the torn
    temporary and finishes. Repeated (up to 5 kills) until one kill lands inside a write."""
    overrides = [
        *SHORT,
        "train.epochs=2",
        "model.proj_hidden_dim=2048",
        "model.embed_dim=1024",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=2",
    ]
    for attempt in range(5):  # a fresh run each time, until a kill lands inside a write
        run_dir = tmp_path / f"try{attempt}"
        ckpt_dir = run_dir / "checkpoints"
        proc = cli_train(run_dir, overrides)
        # armed once a complete checkpoint exists: kill while the next one is being written
        wait_for(
            lambda d=ckpt_dir: bool(ckpt.list_checkpoints(d) and _temporaries(d)),
            proc,
            poll=0.001,
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        if _temporaries(ckpt_dir):
            break
    else:
        pytest.fail("no kill landed inside a checkpoint write in 5 tries")
    torn_step = max(step for step, _ in _temporaries(ckpt_dir))
    _, state = ckpt.load_for_resume("latest", run_dir)  # complete, loads cleanly
    assert state["step"] < torn_step
    assert set(state["model"]) and all(torch.isfinite(v).all() for v in state["model"].values())
    proc = cli_train(run_dir, [*overrides, "checkpoint.resume=latest"])
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert _temporaries(ckpt_dir) == []  # the torn file was removed at the start
    assert [m["epoch"] for m in metrics(run_dir)] == [1, 2]


@pytest.mark.timeout(300)
def test_second_run_into_a_busy_run_dir_is_refused_and_a_killed_lock_is_not_stale(tmp_path):
    """Issue 10 item 14: two real processes; the second (even with overwrite=true, which would
    delete the first one's checkpoints) gets one line and exit 2; after the first is SIGKILLed
    its lock does not block a resume."""
    first = cli_train(tmp_path, [*SHORT, "train.epochs=500"])
    lock = tmp_path / ".lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first)
    wait_for(lambda: bool(ckpt.list_checkpoints(tmp_path / "checkpoints")), first)
    second = cli_train(tmp_path, [*SHORT, "train.epochs=2", "checkpoint.overwrite=true"])
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"is in use by another run (pid {first.pid})" in err
    assert first.poll() is None  # the first run goes on, its checkpoints untouched
    assert ckpt.list_checkpoints(tmp_path / "checkpoints")
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    logged = len(metrics(tmp_path))
    third = cli_train(tmp_path, [*SHORT, f"train.epochs={logged + 2}", "checkpoint.resume=latest"])
    _, err = third.communicate(timeout=180)
    assert third.returncode == 0, err
    epochs = [m["epoch"] for m in metrics(tmp_path)]
    assert epochs == list(range(1, logged + 3))  # one writer: each epoch once, in order


def _vm_size_after_imports() -> int:
    """Virtual memory (bytes) of a Python process that imported torch and the CLI."""
    code = (
        "import torch, debiascl.cli, debiascl.train.trainer;"
        "print(open('/proc/self/status').read().split('VmSize:')[1].split()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) * 1024


@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (Linux)")
def test_real_out_of_memory_names_the_step(tmp_path):
    """A real allocation failure: the process's address space is capped (RLIMIT_AS) at what
    start-up needs plus 1.5 GiB. A tiny run fits (control); a width-512 encoder on a batch of
    1024 does not: exit 3 with one line naming the step, no traceback."""
    import resource

    limit = _vm_size_after_imports() + 1536 * 1024**2

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    small = cli_train(tmp_path / "small", [*SHORT, "train.epochs=1"], preexec_fn=capped)
    _, err = small.communicate(timeout=180)
    assert small.returncode == 0, err
    big = ["data.train_size=1024", "train.batch_size=1024", "model.width=512", "train.epochs=1"]
    proc = cli_train(tmp_path / "big", big, preexec_fn=capped)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err
    assert len(err.strip().splitlines()) == 1, err
    assert "out of memory at epoch 1 step 1 with 1024 samples per process" in err
    assert "lower train.batch_size" in err
