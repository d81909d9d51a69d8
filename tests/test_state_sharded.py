"""Sharded per-sample tables give exactly the replicated tables' rows, losses and updates."""

from __future__ import annotations

import pytest
import torch

from debiascl.errors import CheckpointError, ConfigError
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.state.sharded import ShardedSampleTable, make_table
from debiascl.state.tables import SampleTable
from distributed_helpers import run_distributed

N, B, D, STEPS = 53, 6, 8, 5  # N not a multiple of 2 or 3: uneven shards


def _objective(mode: str, sharding: str) -> ContrastiveObjective:
    return ContrastiveObjective(
        mode,
        GlobalContrastiveLoss(N, mode=mode, gamma=0.7, sharding=sharding),
        GloFNDDetector(N, alpha=0.2, mode=mode, init="batch_quantile", lr=0.1, sharding=sharding),
        num_samples=N,
    )


def _global_batches(mode: str, world: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):  # repeated ids across steps: later steps read updated rows
        ids = torch.randperm(N // 2, generator=g)[: B * world] * 2 + (mode == "image_text")
        out.append(
            (torch.randn(B * world, D, generator=g), torch.randn(B * world, D, generator=g), ids)
        )
    return out


def _tables(obj: ContrastiveObjective) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("loss_fn", "detector"):
        for name, table in getattr(obj, part).tables.items():
            full = table.full_table() if isinstance(table, ShardedSampleTable) else table.data
            out[f"{part}/{name}"] = full.clone()
    return out


def _drive(rank: int, world: int, mode: str) -> dict:
    """The same SogCLR + GloFND steps with replicated and with sharded tables."""
    result: dict = {}
    for sharding in ("replicated", "sharded"):
        obj = _objective(mode, sharding)
        losses, grads = [], []
        for step, (za, zb, ids) in enumerate(_global_batches(mode, world)):
            part = slice(rank * B, (rank + 1) * B)
            a, b = za[part].clone().requires_grad_(), zb[part].clone().requires_grad_()
            out = obj(a, b, ids[part], logit_scale=5.0, ctx=StepContext(step=step))
            out.loss.backward()
            losses.append(torch.stack([out.loss.detach(), out.value.float()]))
            grads.append(torch.cat([a.grad, b.grad]))
        result[sharding] = {"losses": torch.stack(losses), "grads": grads, "tables": _tables(obj)}
        if sharding == "sharded":
            table = obj.detector.tables[next(iter(obj.detector.tables))]
            result["local_rows"] = table.data.shape[0]
    return result


@pytest.mark.distributed
@pytest.mark.parametrize(("world", "mode"), [(2, "image_image"), (3, "image_text")])
def test_sharded_tables_match_replicated_in_gloo_processes(tmp_path, world: int, mode: str) -> None:
    results = run_distributed(_drive, world_size=world, args=(mode,), tmp_path=tmp_path)
    for rank, res in enumerate(results):
        rep, sh = res["replicated"], res["sharded"]
        assert torch.equal(rep["losses"], sh["losses"])
        for g_rep, g_sh in zip(rep["grads"], sh["grads"], strict=True):
            assert torch.equal(g_rep, g_sh)
        assert rep["tables"].keys() == sh["tables"].keys()
        for key, full in rep["tables"].items():
            assert torch.equal(full, sh["tables"][key]), key
            assert (full[:, -1] > 0).sum() > B * world  # several batches' ids were updated
        assert res["local_rows"] == len(range(rank, N, world))  # ~N / world rows per rank
    # the global objective value (column 1) is the same on every rank; the local loss is not
    values = [r["sharded"]["losses"][:, 1] for r in results]
    assert all(torch.equal(v, values[0]) for v in values)


def test_single_process_sharded_table_is_the_replicated_table() -> None:
    g = torch.Generator().manual_seed(0)
    rep = SampleTable(20, ("a", "b"), [1.0, -2.0])
    sh = make_table(20, ("a", "b"), [1.0, -2.0], sharding="sharded")
    assert isinstance(sh, ShardedSampleTable)
    for _ in range(4):
        ids = torch.randperm(20, generator=g)[:7]
        rows = torch.randn(7, 2, generator=g)
        rows[0, 1] = float("nan")  # non-finite rows are not stored in either
        rep.write(ids, rows)
        sh.write(ids, rows)
        probe = torch.randperm(20, generator=g)[:9]
        assert torch.equal(rep.read(probe), sh.read(probe))
    assert torch.equal(rep.data, sh.full_table())


def test_shard_checkpoints_load_full_tables_and_refuse_other_layouts() -> None:
    full = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    shards = []
    for rank in range(3):
        t = ShardedSampleTable(10, ("x", "y", "z"), rank=rank, world_size=3)
        t.load_state_dict({"data": full, "_extra_state": {"columns": ["x", "y", "z"]}})
        assert torch.equal(t.data, full[rank::3])
        shards.append(t.state_dict())
    again = ShardedSampleTable(10, ("x", "y", "z"), rank=1, world_size=3)
    again.load_state_dict(shards[1])
    assert torch.equal(again.data, full[1::3])
    other = ShardedSampleTable(10, ("x", "y", "z"), rank=0, world_size=3)
    with pytest.raises(CheckpointError, match="same number of processes"):
        other.load_state_dict(shards[1])  # rank 1's shard is not rank 0's
    with pytest.raises(ConfigError, match="replicated"):
        ShardedSampleTable(2, ("x",), rank=0, world_size=3)
    with pytest.raises(ConfigError, match="sharding"):
        make_table(10, ("x",), sharding="striped")  # type: ignore[arg-type]
