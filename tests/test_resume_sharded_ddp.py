"""Exact resume of a run with sharded per-sample tables under DDP (2 gloo processes on CPU).

A SogCLR + GloFND run with ``table_sharding: sharded`` stopped after step 5 (SIGUSR1) and
resumed ends bit-identical to the uninterrupted sharded run: weights, every rank's rows of the
u and lambda tables, and ``metrics.jsonl``. The same stopped run resumed with replicated tables
(a switch on resume, re-assembled from both ranks' shard files) ends with the same weights,
full tables and metrics too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from debiascl.state.sharded import ShardedSampleTable
from debiascl.train.table_shards import sample_tables
from debiascl.train.trainer import RunInterrupted
from distributed_helpers import run_distributed
from reliability_helpers import make_trainer, metrics, signal_during_step

METHOD = ["loss.name=sogclr", "negatives.name=glofnd", "negatives.alpha=0.1", "train.epochs=2"]
SHARDED = [*METHOD, "loss.table_sharding=sharded", "negatives.table_sharding=sharded"]


def _weights_and_tables(trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for prefix, table in sample_tables(trainer.objective).items():
        full = table.full_table() if isinstance(table, ShardedSampleTable) else table.data
        out[f"full.{prefix}"] = full.clone()
        if isinstance(table, ShardedSampleTable):
            out[f"local.{prefix}"] = table.data.clone()
    return out


def _worker(rank: int, world_size: int, root: str) -> dict:
    root_dir = Path(root)
    ref = make_trainer(root_dir / "ref", SHARDED)
    ref.fit(evaluate=False)
    want = _weights_and_tables(ref)

    stopped = make_trainer(root_dir / "run", SHARDED)
    if rank == 1:  # a real SIGUSR1 during step 5 on one rank only
        signal_during_step(stopped, 5)
    with pytest.raises(RunInterrupted):
        stopped.fit(evaluate=False)
    files = sorted(p.name for p in (root_dir / "run" / "checkpoints").iterdir())
    if rank == 0:
        shutil.copytree(root_dir / "run", root_dir / "switch")
    dist.barrier()

    resumed = make_trainer(root_dir / "run", [*SHARDED, "checkpoint.resume=latest"])
    resumed.fit(evaluate=False)
    got = _weights_and_tables(resumed)
    switched = make_trainer(root_dir / "switch", [*METHOD, "checkpoint.resume=latest"])
    switched.fit(evaluate=False)
    got_switched = _weights_and_tables(switched)

    same = want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    shared = [k for k in want if not k.startswith("local.")]
    same_switched = set(shared) == set(got_switched) and all(
        torch.equal(want[k], got_switched[k]) for k in shared
    )
    local_rows = [v.shape[0] for k, v in want.items() if k.startswith("local.")]
    out = {"files": files, "same": same, "same_switched": same_switched, "rows": local_rows}
    out["num_samples"] = ref.info.num_samples
    if rank == 0:  # rank 0 writes the logs
        out["metrics"] = [metrics(root_dir / d) for d in ("ref", "run", "switch")]
    return out


@pytest.mark.timeout(300)
def test_sharded_run_stopped_and_resumed_equals_uninterrupted(tmp_path):
    results = run_distributed(
        _worker, world_size=2, args=(str(tmp_path / "runs"),), tmp_path=tmp_path
    )
    for rank, r in enumerate(results):
        # the stopped run's checkpoint: one shard file per rank beside it
        assert sorted(f.split(".")[-1] for f in r["files"]) == ["pt", "shard", "shard"], r["files"]
        assert any(f".rank{rank}of2.shard" in f for f in r["files"])
        assert r["rows"] and all(n == len(range(rank, r["num_samples"], 2)) for n in r["rows"])
        assert r["same"]
        assert r["same_switched"]
    ref_metrics, resumed_metrics, switched_metrics = results[0]["metrics"]
    assert [m["epoch"] for m in ref_metrics] == [1, 2]
    assert "negatives/precision" in ref_metrics[0]
    assert resumed_metrics == ref_metrics
    assert switched_metrics == ref_metrics
