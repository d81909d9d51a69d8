"""SSD-style per-sample eta under 2 real gloo ranks equals one process on the global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from debiascl.objectives import ContrastiveObjective
from debiascl.objectives.debiased_loss import DebiasedLoss

B, D, WORLD = 8, 6, 2


def _data():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(B, D, generator=g, dtype=torch.float64)
    z2 = z1 + 0.4 * torch.randn(B, D, generator=g, dtype=torch.float64)
    ids = torch.randperm(20, generator=g)[:B]
    table = torch.rand(20, generator=g) * 0.3
    return z1, z2, ids, table


def _objective(mode, table):
    return ContrastiveObjective(mode, DebiasedLoss(table, beta=0.5), num_samples=20)


def _worker(rank: int, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    # A FileStore in tmp_path: no TCP port to race for with other tests on the machine.
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD
    )
    try:
        z1, z2, ids, table = _data()
        sl = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        result = {}
        for mode in ("image_image", "image_text"):
            a = z1[sl].clone().requires_grad_(True)
            b = z2[sl].clone().requires_grad_(True)
            out = _objective(mode, table)(a, b, ids[sl], logit_scale=3.0)
            out.loss.backward()
            logs = {k: v for k, v in out.logs.items() if k.endswith("negatives")}
            result[mode] = (float(out.value), a.grad / WORLD, b.grad / WORLD, logs)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    z1, z2, ids, table = _data()
    for mode, negatives in (("image_image", 2 * B - 2), ("image_text", B - 1)):
        a = z1.clone().requires_grad_(True)
        b = z2.clone().requires_grad_(True)
        out = _objective(mode, table)(a, b, ids, logit_scale=3.0)
        out.loss.backward()
        for rank in range(WORLD):
            value, ga, gb, logs = torch.load(tmp_path / f"rank{rank}.pt")[mode]
            sl = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
            assert abs(value - float(out.value)) < 1e-6
            torch.testing.assert_close(ga, a.grad[sl], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(gb, b.grad[sl], rtol=1e-5, atol=1e-7)
            assert all(v == negatives for v in logs.values())  # N is the global count
