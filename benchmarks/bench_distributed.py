"""Section 6: 1 vs 2 gloo processes on the same global batch (throughput and equal results).

The small CNN (batch norm replaced by identity, so that the per-rank forward equals the global
one) trains with SogCLR + GloFND for a few steps on a fixed global batch: in one process, in two
DDP processes with replicated tables, and in two with sharded tables. Reported: global samples
per second (wall), the largest difference of the logged objective and of the final parameters
from the one-process run, and the table bytes per rank.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmarks.common import table
from benchmarks.glofnd_overhead import build_encoder
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss


def _no_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _no_batchnorm(child)
    return module


def _train(rank: int, world: int, batch: int, steps: int, n: int, sharding: str) -> dict:
    torch.manual_seed(0)
    model = _no_batchnorm(build_encoder())
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    objective = ContrastiveObjective(
        "image_image",
        GlobalContrastiveLoss(n, sharding=sharding),
        GloFNDDetector(n, alpha=0.05, init="batch_quantile", sharding=sharding),
        num_samples=n,
    )
    gen = torch.Generator().manual_seed(1)
    x1, x2 = (
        torch.randn(batch, 1, 28, 28, generator=gen),
        torch.randn(batch, 1, 28, 28, generator=gen),
    )
    ids_all = [torch.randperm(n, generator=gen)[:batch] for _ in range(steps + 1)]
    part = slice(rank * batch // world, (rank + 1) * batch // world)
    values, start = [], 0.0
    for step, ids in enumerate(ids_all):
        if step == 1:  # the first step (allocation, first visits) is not timed
            start = time.perf_counter()
        out = objective(
            net(x1[part]), net(x2[part]), ids[part], logit_scale=5.0, ctx=StepContext(step=step)
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        values.append(float(out.value))
    elapsed = time.perf_counter() - start
    table_bytes = sum(
        t.data.numel() * 4
        for part_ in (objective.loss_fn, objective.detector)
        for t in part_.tables.values()
    )
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"values": values, "seconds": elapsed, "params": params, "table_bytes": table_bytes}


def _entry(rank: int, world: int, workdir: str, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(workdir) / "store"), world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    try:
        result = _train(rank, world, *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(workdir) / f"rank{rank}.pt")


def _launch(world: int, args: tuple) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        mp.start_processes(_entry, args=(world, workdir, args), nprocs=world, start_method="spawn")
        return torch.load(Path(workdir) / "rank0.pt", weights_only=False)


def run(batch: int = 256, steps: int = 10, num_samples: int = 10_000) -> tuple[str, dict]:
    torch.set_num_threads(1)
    one = _train(0, 1, batch, steps, num_samples, "replicated")
    runs = {
        "1 process": one,
        "2 gloo processes, replicated tables": _launch(
            2, (batch, steps, num_samples, "replicated")
        ),
        "2 gloo processes, sharded tables": _launch(2, (batch, steps, num_samples, "sharded")),
    }
    rows, results = [], {}
    for name, r in runs.items():
        rate = steps * batch / r["seconds"]
        dv = max(abs(a - b) for a, b in zip(r["values"], one["values"], strict=True))
        dp = float((r["params"] - one["params"]).abs().max())
        rows.append(
            [name, rate, rate * one["seconds"] / (steps * batch), dv, dp, r["table_bytes"] / 2**20]
        )
        results[name] = {
            "throughput ratio": rate * one["seconds"] / (steps * batch),
            "max objective diff": dv,
            "max param diff": dp,
        }
    text = table(
        [
            f"setting (global batch {batch}, {steps} steps)",
            "samples / s",
            "x 1 process",
            "max abs objective diff",
            "max abs param diff",
            "table MiB / rank",
        ],
        rows,
    )
    return text, results
