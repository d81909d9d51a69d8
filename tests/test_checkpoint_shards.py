"""Checkpoints of sharded per-sample tables: every rank's rows reach the checkpoint (one shard
file per rank, written before the checkpoint that lists them), resume is exact with the same
number of processes, re-shards for another number or for replicated tables, and a missing,
damaged or foreign shard file is a one-line error naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from debiascl.atomic import remove_stale_temp_files
from debiascl.checkpoint.shards import SHARDS_KEY, shard_name
from debiascl.errors import CheckpointError
from debiascl.state.sharded import ShardedSampleTable
from debiascl.state.tables import SampleTable
from debiascl.train import checkpoint as ckpt
from debiascl.train.table_shards import complete_state, save_with_shards
from distributed_helpers import run_distributed

N, COLS = 53, ("a", "b", "c")  # N not a multiple of 2 or 3: uneven shards


class _Tables(nn.Module):
    """Two tables, as an objective holds them (a loss's and a detector's)."""

    def __init__(self, sharded: bool) -> None:
        super().__init__()
        kind = ShardedSampleTable if sharded else SampleTable
        self.loss_fn = nn.Module()
        self.loss_fn.u = kind(N, COLS[:2], [0.0, 0.0])
        self.detector = nn.Module()
        self.detector.lam = kind(N, COLS, [1.0, 0.0, 0.0])


def _reference() -> dict[str, torch.Tensor]:
    """Full reference tables, distinct per id and column: row i, column j = i + j / 8 (+ 1000)."""
    ids = torch.arange(N, dtype=torch.float32)[:, None]
    return {
        "loss_fn.u.": ids + torch.arange(2) / 8,
        "detector.lam.": ids + torch.arange(3) / 8 + 1000,
    }


def _tables(module: _Tables) -> dict[str, SampleTable]:
    return {"loss_fn.u.": module.loss_fn.u, "detector.lam.": module.detector.lam}


def _fill(module: _Tables, offset: float = 0.0) -> None:
    """Store the reference rows (plus ``offset``) in each table's own layout."""
    for prefix, table in _tables(module).items():
        full = _reference()[prefix] + offset
        if isinstance(table, ShardedSampleTable):
            full = full[table.rank :: table.world_size]
        table.data.copy_(full)


def _full(module: _Tables) -> dict[str, torch.Tensor]:
    """Every table as a full (N, C) table (a collective for sharded ones)."""
    return {
        prefix: table.full_table() if isinstance(table, ShardedSampleTable) else table.data.clone()
        for prefix, table in _tables(module).items()
    }


def _save(module: nn.Module, directory: Path, step: int, keep_last: int = 3) -> Path | None:
    def make_state() -> dict:
        return {"model": {}, "fingerprint": "f", "objective": module.state_dict(), "step": step}

    name = ckpt.checkpoint_name(0, step)
    return save_with_shards(module, directory, name, make_state, keep_last, step == 2, "cpu")


def _load(module: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(complete_state(state, path, module)["objective"])


# ------------------------------------------------------------ table round trips, re-sharding
def _save_worker(rank: int, world: int, directory: str) -> dict:
    """Save steps 1-3 (step 2 the best; keep_last=1 prunes it as a periodic file), then load
    step 3 into fresh sharded tables of the same world size."""
    module = _Tables(sharded=True)
    for step in (1, 2, 3):
        _fill(module, offset=step)
        path = _save(module, Path(directory), step, keep_last=1)
    again = _Tables(sharded=True)
    _load(again, Path(directory) / ckpt.checkpoint_name(0, 3))
    return {
        "path": path,
        "saved": {p: t.data.clone() for p, t in _tables(module).items()},
        "loaded": {p: t.data.clone() for p, t in _tables(again).items()},
    }


def _load_worker(rank: int, world: int, paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        module = _Tables(sharded=True)
        _load(module, Path(path))
        local = {p: t.data.clone() for p, t in _tables(module).items()}
        out.append({"local": local, "full": _full(module)})
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Checkpoints of two tables sharded over 2 gloo processes (see :func:`_save_worker`)."""
    root = tmp_path_factory.mktemp("shards")
    results = run_distributed(_save_worker, 2, (str(root / "ckpt"),), tmp_path=root)
    return root / "ckpt", results


def test_every_rank_rows_reach_the_checkpoint_and_resume_exactly(saved) -> None:
    directory, results = saved
    path = directory / ckpt.checkpoint_name(0, 3)
    assert results[0]["path"] == path and results[1]["path"] is None
    state = torch.load(path, weights_only=True)
    manifest = state[SHARDS_KEY]
    assert manifest["world_size"] == 2 and manifest["keys"] == ["loss_fn.u.", "detector.lam."]
    assert not any(k.endswith(".data") for k in state["objective"])  # rows only in shards
    token2 = torch.load(directory / "best.pt", weights_only=True)[SHARDS_KEY]["token"]
    want = {path.name, "best.pt"}
    want |= {shard_name(path.stem, manifest["token"], r, 2) for r in range(2)}
    want |= {shard_name("best", token2, r, 2) for r in range(2)}
    assert {p.name for p in directory.iterdir()} == want  # steps 1, 2 pruned, best kept
    for rank, res in enumerate(results):  # each rank saved its ~N/2 rows and got them back
        for prefix, local in res["saved"].items():
            assert torch.equal(local, (_reference()[prefix] + 3)[rank::2])
            assert torch.equal(res["loaded"][prefix], local)


def test_other_world_sizes_and_replicated_tables_reshard(saved, tmp_path) -> None:
    directory, _ = saved
    step3, best = directory / ckpt.checkpoint_name(0, 3), directory / "best.pt"
    replicated = _Tables(sharded=False)  # a replicated run's checkpoint: full tables inside
    _fill(replicated, offset=5)
    full5 = _save(replicated, tmp_path / "rep", 5)
    assert not list((tmp_path / "rep").glob("*.shard"))
    paths = [str(step3), str(full5)]
    three = run_distributed(_load_worker, 3, (paths,), tmp_path=tmp_path)
    for rank, res in enumerate(three):
        for res_path, offset in zip(res, (3, 5), strict=True):
            assert res_path["local"]["detector.lam."].shape[0] == len(range(rank, N, 3))
            for prefix, full in res_path["full"].items():
                assert torch.equal(full, _reference()[prefix] + offset), prefix
    for sharded in (False, True):  # one process: replicated tables, and a 1-way sharding
        module = _Tables(sharded)
        _load(module, best)
        for prefix, full in _full(module).items():
            assert torch.equal(full, _reference()[prefix] + 2), prefix


# ------------------------------------------------------------------------ damaged shard files
def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        _load(_Tables(sharded=False), path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_damaged_or_foreign_shard_files_are_named(saved, tmp_path) -> None:
    directory = tmp_path / "ckpt"
    shutil.copytree(saved[0], directory)
    step3, best = directory / ckpt.checkpoint_name(0, 3), directory / "best.pt"
    token3 = torch.load(step3, weights_only=True)[SHARDS_KEY]["token"]
    token2 = torch.load(best, weights_only=True)[SHARDS_KEY]["token"]
    shard3 = directory / shard_name(step3.stem, token3, 1, 2)
    shard2 = directory / shard_name("best", token2, 1, 2)
    # another save's rows under this save's name: same size, other content
    original = shard2.read_bytes()
    shard2.unlink()  # a hard link to the step-2 file: replace, do not write through it
    shard2.write_bytes(shard3.read_bytes())
    assert str(shard2) in _one_line_error(best, "does not match")
    shard2.write_bytes(original[:-100])  # truncated
    assert str(shard2) in _one_line_error(best, r"other \d+ bytes, recorded \d+")
    shard3.unlink()
    assert str(shard3) in _one_line_error(step3, "is missing")


# ------------------------------------------------------------------------ SIGKILL mid-save
def _saving_forever(rank: int, world: int, directory: str) -> None:
    module = _Tables(sharded=True)
    for step in range(1, 1000):
        _fill(module, offset=step)
        _save(module, Path(directory), step, keep_last=2)


def _orphans(directory: Path) -> list[Path]:
    """Shard files whose checkpoint does not exist."""
    return [
        p
        for p in directory.glob("*.shard")
        if not (directory / f"{p.name.split('.')[0]}.pt").exists()
    ]


def _unfinished(directory: Path) -> list[Path]:
    """Shard files of a step after the newest checkpoint's (a save in progress)."""
    saved = ckpt.list_checkpoints(directory)
    newest = saved[-1].name.split(".")[0] if saved else None
    return [p for p in _orphans(directory) if newest and p.name.split(".")[0] > newest]


@pytest.mark.timeout(120)
def test_sigkill_between_shards_and_checkpoint_leaves_a_consistent_latest(tmp_path) -> None:
    import os
    import subprocess
    import sys
    import time

    directory = tmp_path / "checkpoints"
    tests = Path(__file__).parent

    def rank_code(rank: int) -> str:  # one gloo process per rank, no launcher
        return (
            f"import sys; sys.path.insert(0, {str(tests)!r})\n"
            "import torch.distributed as dist\n"
            "from test_checkpoint_shards import _saving_forever\n"
            f"store = dist.FileStore({str(tmp_path / 'store')!r}, 2)\n"
            f"dist.init_process_group('gloo', store=store, rank={rank}, world_size=2)\n"
            f"_saving_forever({rank}, 2, {str(directory)!r})\n"
        )

    # every atomic write sleeps 1 s between fsync and rename: the shard files of a step are
    # complete and renamed about 1 s before rank 0's checkpoint of that step appears
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEBIASCL_FAULT_WRITE_DELAY": "1.0"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", rank_code(rank)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        deadline = time.monotonic() + 100
        while not (directory.is_dir() and _unfinished(directory)):
            for proc in procs:
                assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no save reached its shards"
            time.sleep(0.005)
    finally:
        for proc in procs:
            proc.kill()  # SIGKILL, both ranks
            proc.wait()
    orphans = _unfinished(directory)
    assert len(orphans) >= 1  # killed after a rank renamed its shard, before the checkpoint
    latest = ckpt.resolve_resume("latest", tmp_path)
    step = torch.load(latest, weights_only=True)["step"]
    assert all(f"step{step + 1:08d}." in p.name for p in orphans)
    module = _Tables(sharded=False)
    _load(module, latest)  # both ranks' files, all of the latest step
    for prefix, full in _full(module).items():
        assert torch.equal(full, _reference()[prefix] + step), prefix
    remove_stale_temp_files(directory)  # as a run does when it starts
    _save(module, directory, step + 5)  # the next save deletes the dead save's shards
    assert not _orphans(directory) and not list(directory.glob(f"*step{step + 1:08d}*"))
