"""Sections 2 and 3: GloFND's share of a training step, and per-sample tables at scale.

Section 2: a full SimCLR step (small CNN on 28x28 inputs, SogCLR + GloFND, backward, AdamW) with
GloFND's threshold update + keep-mask timed inside the same step, at alpha (2B - 2) below 1
(alpha = 0.2 / (2B - 2)) and above 1 (alpha = 0.05).

Section 3: per-step table cost (one read + one write of B random ids in GloFND's (N, 4) and
SogCLR's (N, 2) tables) at N = 10^3 ... 10^8, calls alternating between sizes; bytes per id;
``placement="device"`` vs ``"cpu"``; the full step at the smallest vs the largest N; and the
memory per rank of sharded tables (``table_sharding: sharded``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from benchmarks.bench_full_step import full_step_by_n, spread_ids
from benchmarks.common import interleaved, table
from benchmarks.glofnd_overhead import build_encoder
from debiascl.negatives.glofnd import LAMBDA_COLUMNS, GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import U_COLUMNS, GlobalContrastiveLoss
from debiascl.state.sharded import ShardedSampleTable

# full_step_by_n (section 3b) lives in bench_full_step; run_all reaches it through this module
__all__ = ["full_step_by_n", "glofnd_share", "sharded_memory", "table_cost"]


class _ThreadTimed(nn.Module):
    """A detector wrapper recording the CPU time of each call made inside the step."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.last = inner, 0.0

    def forward(self, batch: Any, ctx: Any) -> torch.Tensor:
        start = time.thread_time()
        keep = self.inner(batch, ctx)
        self.last = time.thread_time() - start
        return keep


class _Step:
    """One SimCLR training step with SogCLR + GloFND over an id space of size N.

    ``pool``: the ids the measured steps draw their batches from (default: 4 batches of distinct
    random ids, or whole batches of all N ids when N is smaller); the warm-up visits each once.
    """

    def __init__(
        self,
        batch: int,
        num_samples: int,
        alpha: float,
        placement: str = "device",
        pool: torch.Tensor | None = None,
    ):
        torch.manual_seed(0)
        self.encoder = build_encoder()
        self.opt = torch.optim.AdamW(self.encoder.parameters(), lr=1e-3)
        self.detector = _ThreadTimed(
            GloFNDDetector(num_samples, alpha=alpha, init="batch_quantile", placement=placement)
        )
        self.objective = ContrastiveObjective(
            "image_image",
            GlobalContrastiveLoss(num_samples, placement=placement),
            self.detector,
            num_samples=num_samples,
        )
        self.x1, self.x2 = torch.randn(batch, 1, 28, 28), torch.randn(batch, 1, 28, 28)
        # Steady state: a pool of batches visited in the warm-up, then random batches of it.
        gen = torch.Generator().manual_seed(1)
        if pool is None:
            size = min(4 * batch, num_samples // batch * batch)
            pool = spread_ids(num_samples, size, gen)
        self.pool, self.batch, self.num_samples, self.gen = pool, batch, num_samples, gen
        for part in self.pool.split(batch):
            self.step(part)

    def step(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """One training step on ``ids`` (default: a random batch of the pool); returns the loss."""
        if ids is None:
            ids = self.pool[torch.randperm(self.pool.numel(), generator=self.gen)[: self.batch]]
        out = self.objective(
            self.encoder(self.x1), self.encoder(self.x2), ids, logit_scale=5.0, ctx=StepContext()
        )
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        return out.loss.detach()


def glofnd_share(batch: int = 256, rounds: int = 10) -> tuple[str, dict]:
    """Section 2: GloFND's CPU time as a share of the full step's CPU time."""
    k = 2 * batch - 2
    alphas = {"alpha (2B-2) = 0.2 (below 1)": 0.2 / k, "alpha (2B-2) > 1 (alpha 0.05)": 0.05}
    steps = {name: _Step(batch, 60_000, a) for name, a in alphas.items()}
    shares: dict[str, list[float]] = {name: [] for name in steps}
    totals: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, st in steps.items():
            start = time.thread_time()
            st.step()
            total = time.thread_time() - start
            totals[name].append(total)
            shares[name].append(st.detector.last / total)
    rows, results = [], {}
    for name in steps:
        share = 100 * sorted(shares[name])[len(shares[name]) // 2]
        step_ms = 1e3 * sorted(totals[name])[len(totals[name]) // 2]
        rows.append([name, step_ms, share])
        results[name] = share
    text = table([f"setting (B = {batch})", "step CPU ms", "GloFND share %"], rows)
    return text, results


def table_cost(
    batch: int = 256, sizes: tuple[int, ...] = (10**3, 10**5, 10**7, 10**8), rounds: int = 200
) -> tuple[str, dict]:
    """Section 3: per-step table read + write cost by N and placement, bytes per id.

    Where N holds a new batch of ids for every call (N >= B x calls), each call reads and writes
    rows spread over the whole id space that no earlier call touched (cold in cache and TLB, as
    in an epoch over N ids); a smaller N cycles through random batches of its ids.
    """
    gen = torch.Generator().manual_seed(2)
    calls = rounds + 3  # interleaved's warm-up below
    setups: dict[str, tuple[Any, Any, list[torch.Tensor]]] = {}
    for n in sizes:
        # On a machine without an accelerator both placements are host memory; the "cpu" row
        # is then the pinned-memory path's bookkeeping only (kept for the GPU run).
        for placement in ("device", "cpu") if n <= 10**7 else ("device",):
            lam = GloFNDDetector(n, alpha=0.05, placement=placement).tables["image"]
            u = GlobalContrastiveLoss(n, placement=placement).tables["image"]
            if n >= batch * calls:
                ids = list(spread_ids(n, batch * calls, gen).split(batch))
            else:
                ids = [torch.randperm(n, generator=gen)[:batch] for _ in range(8)]
            setups[f"{n:.0e} {placement}"] = (lam, u, ids)

    def ops(key: str) -> Any:
        lam, u, ids = setups[key]
        counter = iter(range(10**9))

        def call() -> None:
            i = ids[next(counter) % len(ids)]
            lam.write(i, lam.read(i))
            u.write(i, u.read(i))

        return call

    med = interleaved({k: ops(k) for k in setups}, rounds, warmup=3)
    base = med[f"{sizes[0]:.0e} device"]
    rows = [[k, 1e3 * v, v / base] for k, v in med.items()]
    bytes_per_id = 4 * (len(LAMBDA_COLUMNS) + len(U_COLUMNS))
    text = table(["N, placement", "CPU ms per step", "x N=1e3"], rows)
    text += (
        f"\n\nBytes per id (SogCLR u table + GloFND lambda table, unimodal): {bytes_per_id} "
        f"({bytes_per_id * 1e8 / 2**30:.2f} GiB at N = 10^8 per rank, replicated)."
    )
    results = {"table ratio max N / 1e3": med[f"{sizes[-1]:.0e} device"] / base}
    return text, results


def sharded_memory(num_samples: int = 10**8, worlds: tuple[int, ...] = (1, 2, 4, 8)) -> str:
    """Bytes per rank of SogCLR + GloFND tables, replicated vs sharded (rank 0, allocated)."""
    cols = len(LAMBDA_COLUMNS) + len(U_COLUMNS)
    rows = []
    for w in worlds:
        t = ShardedSampleTable(num_samples, ("x",), rank=0, world_size=w)
        local = t.local_bytes * cols  # one column allocated and measured, times the columns
        del t
        rows.append([w, 4 * cols * num_samples / 2**30, local / 2**30])
    return table(
        [f"ranks (N = {num_samples:.0e})", "replicated GiB per rank", "sharded GiB per rank"], rows
    )
