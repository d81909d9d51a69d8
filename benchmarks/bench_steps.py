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

from benchmarks.common import interleaved, table
from benchmarks.glofnd_overhead import build_encoder
from debiascl.negatives.glofnd import LAMBDA_COLUMNS, GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import U_COLUMNS, GlobalContrastiveLoss
from debiascl.state.sharded import ShardedSampleTable


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
    """One SimCLR training step with SogCLR + GloFND over an id space of size N."""

    def __init__(self, batch: int, num_samples: int, alpha: float, placement: str = "device"):
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
        # Steady state: a pool of 4 batches visited in the warm-up, then random batches of it.
        gen = torch.Generator().manual_seed(1)
        if num_samples <= 10**6:  # (a smaller N than 4 batches: whole batches of all N ids)
            size = min(4 * batch, num_samples // batch * batch)
            self.pool = torch.randperm(num_samples, generator=gen)[:size]
        else:  # no O(N) permutation: distinct random ids
            self.pool = torch.randint(0, num_samples, (8 * batch,), generator=gen).unique()
            self.pool = self.pool[torch.randperm(self.pool.numel(), generator=gen)[: 4 * batch]]
        self.batch, self.num_samples, self.gen = batch, num_samples, gen
        for part in self.pool.split(batch):
            self.step(part)

    def step(self, ids: torch.Tensor | None = None) -> None:
        if ids is None:
            ids = self.pool[torch.randperm(self.pool.numel(), generator=self.gen)[: self.batch]]
        out = self.objective(
            self.encoder(self.x1), self.encoder(self.x2), ids, logit_scale=5.0, ctx=StepContext()
        )
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()


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
    """Section 3: per-step table read + write cost by N and placement, bytes per id."""
    gen = torch.Generator().manual_seed(2)
    setups: dict[str, tuple[Any, Any, list[torch.Tensor]]] = {}
    for n in sizes:
        # On a machine without an accelerator both placements are host memory; the "cpu" row
        # is then the pinned-memory path's bookkeeping only (kept for the GPU run).
        for placement in ("device", "cpu") if n <= 10**7 else ("device",):
            lam = GloFNDDetector(n, alpha=0.05, placement=placement).tables["image"]
            u = GlobalContrastiveLoss(n, placement=placement).tables["image"]
            ids = [torch.randperm(min(n, 4 * batch), generator=gen)[:batch] for _ in range(8)]
            if n > 4 * batch:  # spread over the whole id space (cache misses included)
                stride = n // (4 * batch)
                ids = [i * stride + torch.randint(0, stride, (1,), generator=gen) for i in ids]
            setups[f"{n:.0e} {placement}"] = (lam, u, ids)
    counter = [0]

    def ops(key: str) -> Any:
        lam, u, ids = setups[key]

        def call() -> None:
            i = ids[counter[0] % len(ids)]
            counter[0] += 1
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


def full_step_by_n(
    batch: int = 256, sizes: tuple[int, int] = (10**3, 10**8), rounds: int = 10
) -> tuple[str, dict]:
    """Section 3: the whole training step at the smallest vs the largest id space."""
    steps = {n: _Step(batch, n, 0.05) for n in sizes}
    med = interleaved({f"N = {n:.0e}": st.step for n, st in steps.items()}, rounds, warmup=1)
    small, large = (med[f"N = {n:.0e}"] for n in sizes)
    text = table(
        [f"step (SogCLR + GloFND, B = {batch})", "CPU ms"], [[k, 1e3 * v] for k, v in med.items()]
    )
    text += f"\n\nRatio N = {sizes[1]:.0e} / N = {sizes[0]:.0e}: {large / small:.3f}"
    return text, {"full step ratio": large / small}


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
