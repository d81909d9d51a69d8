"""Stop signals and exact resume under DDP (2 gloo processes on CPU): a SIGUSR1 reaching only
rank 1 stops both ranks at the same step with one checkpoint, and the resumed run ends
bit-identical to the uninterrupted 2-process run -- weights, tables and ``metrics.jsonl``,
whose false-negative precision/recall sum over both ranks (each rank's running sums are
checkpointed and restored to that rank)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from debiascl.train import checkpoint as ckpt
from debiascl.train.trainer import RunInterrupted
from distributed_helpers import run_distributed
from reliability_helpers import make_trainer, metrics, signal_during_step, tensors_of

OVERRIDES = ["negatives.name=glofnd", "negatives.alpha=0.1", "train.epochs=2"]


def _worker(rank: int, world_size: int, root: str) -> dict:
    root_dir = Path(root)
    ref = make_trainer(root_dir / "ref", OVERRIDES)
    ref.fit(evaluate=False)
    want = tensors_of(ref)

    stopped = make_trainer(root_dir / "run", OVERRIDES)
    if rank == 1:  # a real SIGUSR1 during step 5 on one rank only
        signal_during_step(stopped, 5)
    code = None
    try:
        stopped.fit(evaluate=False)
    except RunInterrupted as err:
        code = err.exit_code
    stop_step = stopped.state.step
    names = [p.name for p in ckpt.list_checkpoints(root_dir / "run" / "checkpoints")]

    resumed = make_trainer(root_dir / "run", [*OVERRIDES, "checkpoint.resume=latest"])
    resumed.fit(evaluate=False)
    got = tensors_of(resumed)
    same = all(torch.equal(want[k], got[k]) for k in want) and want.keys() == got.keys()
    out = {"code": code, "stop_step": stop_step, "names": names, "same": same}
    if rank == 0:  # rank 0 writes the logs
        out["metrics"] = (metrics(root_dir / "ref"), metrics(root_dir / "run"))
    return out


@pytest.mark.timeout(300)
def test_signal_on_one_rank_stops_all_and_resume_is_exact(tmp_path):
    results = run_distributed(
        _worker, world_size=2, args=(str(tmp_path / "runs"),), tmp_path=tmp_path
    )
    for r in results:
        assert r["code"] == 128 + signal.SIGUSR1  # rank 0 never received it, yet reports it
        assert r["stop_step"] == 5
        assert r["names"] == ["epoch0000-step00000005.pt"]
        assert r["same"]
    ref_metrics, resumed_metrics = results[0]["metrics"]
    assert [m["epoch"] for m in ref_metrics] == [1, 2]
    assert "negatives/precision" in ref_metrics[0]  # the stopped epoch has detection statistics
    assert resumed_metrics == ref_metrics
