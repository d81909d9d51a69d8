"""Run a test function in K real gloo processes on CPU and collect what each rank returns.

Usage from a test module::

    from distributed_helpers import run_distributed

    def _worker(rank: int, world_size: int, scale: float) -> dict:   # module level: picklable
        ...                                   # the default process group is initialised here
        return {"loss": loss.detach()}        # anything torch.save can store

    def test_something(tmp_path):
        results = run_distributed(_worker, world_size=2, args=(2.0,), tmp_path=tmp_path)
        assert results[0]["loss"] == results[1]["loss"]

Each worker process gets ``OMP_NUM_THREADS=1``, a gloo group rendezvoused through a
``FileStore`` in ``tmp_path`` (no ports), and its own result file; any exception in a worker fails
the call with that worker's traceback.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(
    rank: int,
    world_size: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    workdir: str,
    timeout_s: float,
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    out = Path(workdir) / f"result_{rank}.pt"
    try:
        store = dist.FileStore(str(Path(workdir) / "store"), world_size)
        dist.init_process_group(
            "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        torch.save({"ok": True, "result": result}, out)
    except BaseException:  # report any failure to the parent, then fail the process
        torch.save({"ok": False, "error": traceback.format_exc()}, out)
        raise


def run_distributed(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    tmp_path: str | os.PathLike[str] | None = None,
    timeout_s: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes.

    Args:
        fn: a module-level (picklable) function; the default process group is initialised when
            it runs and destroyed afterwards.
        world_size: number of processes.
        args: extra picklable arguments.
        tmp_path: a fresh directory for the rendezvous and result files (default: a temp dir).
        timeout_s: collective timeout inside the workers.

    Returns:
        The list of per-rank return values, in rank order.
    """
    with tempfile.TemporaryDirectory(dir=tmp_path) as workdir:
        ctx = mp.start_processes(
            _entry,
            args=(world_size, fn, tuple(args), workdir, timeout_s),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        errors: list[str] = []
        try:
            while not ctx.join():
                pass
        except Exception as exc:  # a worker died: collect the tracebacks it saved
            errors.append(str(exc))
        results: list[Any] = []
        for rank in range(world_size):
            path = Path(workdir) / f"result_{rank}.pt"
            if not path.exists():
                errors.append(f"rank {rank} wrote no result")
                continue
            payload = torch.load(path, weights_only=False)
            if payload["ok"]:
                results.append(payload["result"])
            else:
                errors.append(f"rank {rank} failed:\n{payload['error']}")
        if errors:
            raise AssertionError("distributed test failed:\n" + "\n".join(errors))
        return results
