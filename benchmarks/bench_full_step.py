"""Section 3b: a full training step at a small vs a large id space N, side by side.

A SimCLR step (small CNN on 28x28 inputs, B = 256, SogCLR + GloFND, backward, AdamW) at
N = 10^3 and N = 10^8. Only the per-sample tables depend on N, so the measurement is built to
leave every other difference out, and to show where any difference comes from:

* one encoder, AdamW and input batch serve both sides, each with its own objective (its own
  tables). Before the second step of a pair, the weights, BatchNorm statistics and AdamW
  moments are copied back in place to their values before the first, so the two steps run the
  same operations on the same tensors (two separately built models differ in memory layout,
  which moved identical work by several percent, differently from run to run);
* after a warm-up (first visits on both sides), every row of both sides' tables is set to the
  same visited row, so the tables are written whole (every page touched) before the first
  measured step. The small side's rows are reset to it before each pair (outside the timing;
  a 24 KB table stays in cache), while the large side draws a new batch of ids spread over the
  whole id space each step: rows untouched since the fill, cold in cache and TLB, as in an
  epoch over 10^8 ids. Both steps of a pair thus compute the same loss bit for bit (checked);
* pairs alternate the order (small first, large first); each step is timed by the CPU time of
  the thread, and the objective call inside it (where every table read and write happens)
  apart; the results are the medians of the per-pair ratios and differences, with their
  interquartile ranges and distribution-free intervals of the median;
* one step per side runs under :class:`TableOps`, which lists every operation on the tables'
  storage: a step whose table work is O(B) shows only row gathers and scatters of B rows.
"""

from __future__ import annotations

import collections
import math
import resource
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.common import table
from benchmarks.glofnd_overhead import build_encoder
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.state.tables import SampleTable


def spread_ids(num_samples: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` distinct ids in [0, N) spread over the whole id space, in random order.

    One id drawn in each of ``count`` equal strata (so no O(N) permutation at N = 10^8, and the
    rows lie far apart in the table: every access leaves the cache as it does in real training).
    """
    if count > num_samples:
        raise ValueError(f"cannot draw {count} distinct ids from {num_samples}")
    edges = torch.arange(count + 1, dtype=torch.float64) * (num_samples / count)
    lo, hi = edges[:-1].ceil().long(), edges[1:].ceil().long()  # disjoint, non-empty strata
    ids = lo + (torch.rand(count, generator=gen, dtype=torch.float64) * (hi - lo)).long()
    return ids[torch.randperm(count, generator=gen)]


class TableOps(TorchDispatchMode):
    """Counts the aten ops that read or write the storage of a module's per-sample tables.

    Views (O(1), no data touched) are left out; for the row gathers/scatters the number of
    indexed rows is kept. Any whole-table op (a sum, clone, copy, mask, nonzero) shows by name.
    """

    VIEWS = frozenset({"view", "select", "slice", "as_strided", "alias", "detach", "unbind"})

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        tables = [m.data for m in module.modules() if isinstance(m, SampleTable)]
        self.storages = {t.untyped_storage().data_ptr() for t in tables} - {0}
        self.ops: collections.Counter[str] = collections.Counter()
        self.rows = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        name = func.overloadpacket.__name__
        if name not in self.VIEWS and any(
            t.untyped_storage().data_ptr() in self.storages for t in tensors
        ):
            self.ops[name] += 1
            if name.startswith("index_"):
                self.rows = max(self.rows, args[2].numel())
        return out

    def summary(self) -> str:
        ops = ", ".join(f"`{k}` x{v}" for k, v in sorted(self.ops.items()))
        return f"{ops} (at most {self.rows} rows each)"


class SharedModel:
    """One encoder + AdamW + input batch, and one SogCLR + GloFND objective per id space."""

    def __init__(self, batch: int, sizes: tuple[int, ...], alpha: float = 0.05) -> None:
        torch.manual_seed(0)
        self.encoder = build_encoder()
        self.opt = torch.optim.AdamW(self.encoder.parameters(), lr=1e-3)
        self.x1, self.x2 = torch.randn(batch, 1, 28, 28), torch.randn(batch, 1, 28, 28)
        self.objectives = {
            n: ContrastiveObjective(
                "image_image",
                GlobalContrastiveLoss(n),
                GloFNDDetector(n, alpha=alpha, init="batch_quantile"),
                num_samples=n,
            )
            for n in sizes
        }
        self.tables = {
            n: [m for m in obj.modules() if isinstance(m, SampleTable)]
            for n, obj in self.objectives.items()
        }
        self.objective_s = 0.0
        self._saved: list[torch.Tensor] = []

    def step(self, n: int, ids: torch.Tensor) -> torch.Tensor:
        """One training step with the objective of id space ``n``; returns the loss."""
        a, b = self.encoder(self.x1), self.encoder(self.x2)
        start = time.thread_time()
        out = self.objectives[n](a, b, ids, logit_scale=5.0, ctx=StepContext())
        self.objective_s = time.thread_time() - start
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        return out.loss.detach()

    def _state(self) -> list[torch.Tensor]:
        state = [*self.encoder.parameters(), *self.encoder.buffers()]
        for per_param in self.opt.state.values():
            state += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
        return state

    @torch.no_grad()
    def save(self) -> None:
        self._saved = [t.detach().clone() for t in self._state()]

    @torch.no_grad()
    def restore(self) -> None:
        """Weights, statistics and moments back to :meth:`save`'s, in place (same tensors)."""
        for t, saved in zip(self._state(), self._saved, strict=True):
            t.copy_(saved)

    def fill(self, row_of: int) -> None:
        """Every row of every table (both sides) := the small side's row ``row_of``."""
        first = min(self.tables)
        rows = [t.data[row_of].clone() for t in self.tables[first]]
        for n in self.tables:
            self.reset(n, rows)
        self.fill_rows = rows

    @torch.no_grad()
    def reset(self, n: int, rows: list[torch.Tensor]) -> None:
        for t, row in zip(self.tables[n], rows, strict=True):
            t.data.copy_(row.expand_as(t.data))

    def pair(self, batches: dict[int, torch.Tensor], order: list[int]) -> dict[int, tuple]:
        """Both sides' steps from the same weights: (CPU s, objective CPU s, faults, loss)."""
        self.save()
        out = {}
        for i, n in enumerate(order):
            if i:
                self.restore()
            faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            start = time.thread_time()
            loss = self.step(n, batches[n])
            elapsed = time.thread_time() - start
            faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
            out[n] = (elapsed, self.objective_s, faults, loss)
        return out


def full_step_by_n(
    batch: int = 256, sizes: tuple[int, int] = (10**3, 10**8), pairs: int = 50
) -> tuple[str, dict]:
    """Section 3b: the whole training step at the smallest vs the largest id space."""
    small, large = sizes
    if 3 * batch > small or batch * (pairs + 1) > large:
        raise ValueError(f"N = {sizes} too small for B = {batch} and {pairs} pairs")
    gen, order = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    model = SharedModel(batch, sizes)
    pools = {n: spread_ids(n, 3 * batch, gen).split(batch) for n in sizes}
    model.step(small, pools[small][0])  # creates AdamW's moments, which save/restore copy
    for j in range(3):  # warm-up: first visits of 3 batches of ids on both sides
        model.pair({n: pools[n][j] for n in sizes}, list(sizes))
    logs = {}
    for n in sizes:
        model.save()
        with TableOps(model.objectives[n]) as logs[n]:
            model.step(n, pools[n][0])
        model.restore()
    model.fill(int(pools[small][0][0]))
    cold = spread_ids(large, batch * (pairs + 1), gen).split(batch)
    res: dict[int, list[tuple]] = {n: [] for n in sizes}
    same = True
    for k in range(-1, pairs):  # pair -1: warm-up
        model.reset(small, model.fill_rows)
        batches = {small: torch.randperm(small, generator=order)[:batch], large: cold[k + 1]}
        out = model.pair(batches, list(sizes) if k % 2 == 0 else [large, small])
        same = same and bool(torch.equal(out[small][3], out[large][3]))
        if k >= 0:
            for n in sizes:
                res[n].append(out[n])
    step_t = {n: [r[0] for r in res[n]] for n in sizes}
    obj_t = {n: [r[1] for r in res[n]] for n in sizes}
    rest = {n: [r[0] - r[1] for r in res[n]] for n in sizes}
    faults = {n: [r[2] for r in res[n]] for n in sizes}
    ratios = [b / a for a, b in zip(step_t[small], step_t[large], strict=True)]
    rest_ratios = [b / a for a, b in zip(rest[small], rest[large], strict=True)]
    obj_diff = [b - a for a, b in zip(obj_t[small], obj_t[large], strict=True)]
    base = statistics.median(step_t[small])
    rows = [
        [
            f"N = {n:.0e}",
            1e3 * statistics.median(step_t[n]),
            1e3 * statistics.median(obj_t[n]),
            1e3 * statistics.median(rest[n]),
            f"{statistics.median(faults[n]):.0f} ({sum(faults[n])} in all)",
        ]
        for n in sizes
    ]
    text = table(
        [
            f"step (SogCLR + GloFND, B = {batch})",
            "step CPU ms",
            "objective CPU ms (tables, GloFND, loss)",
            "rest CPU ms (encoder, backward, AdamW)",
            "minor page faults per step: median (total)",
        ],
        rows,
    )
    r, d = spread(ratios), spread(obj_diff)
    implied = [1 + x / base for x in d]
    text += (
        f"\n\nMedians over {pairs} pairs of steps from the same weights (one model, restored "
        f"in place between the two steps of a pair); at N = {large:.0e} every step reads and "
        f"writes rows untouched since the tables were filled (cold), at N = {small:.0e} the "
        f"whole table is in cache; same losses on both sides bit for bit: "
        f"{'yes' if same else 'NO'}. Per pair, N = {large:.0e} / N = {small:.0e}:\n\n"
        f"- **full step: {_fmt(r)}**;\n"
        f"- rest of the step (the same operations on the same tensors, no table): "
        f"{_fmt(spread(rest_ratios))};\n"
        f"- objective, where every table access is: {1e3 * d[1]:+.2f} ms per step "
        f"({d[5]:.0%} interval {1e3 * d[3]:+.2f} - {1e3 * d[4]:+.2f} ms), i.e. a full step "
        f"x{implied[1]:.4f} ({implied[3]:.4f} - {implied[4]:.4f}).\n\n"
        f"Operations on the tables in one step: N = {small:.0e}: {logs[small].summary()}; "
        f"N = {large:.0e}: {logs[large].summary()}."
    )
    return text, {
        "full step ratio": r[1],
        "full step ratio interval": (r[3], r[4]),
        "full step ratio from objective": implied[1],
        "rest ratio": statistics.median(rest_ratios),
        "same losses": same,
        "step times": step_t,
        "objective times": obj_t,
        "page faults": faults,
    }


def spread(xs: list[float], level: float = 0.95) -> tuple[float, ...]:
    """(first quartile, median, third quartile, lower and upper end of a distribution-free
    interval of the median, its coverage): the order statistics x_(j), x_(n + 1 - j) with the
    largest j whose coverage 1 - 2 P(Binomial(n, 1/2) <= j - 1) is at least ``level`` (j = 1,
    the whole range, when n is too small for ``level``)."""
    s, n = sorted(xs), len(xs)
    q = statistics.quantiles(s, n=4, method="inclusive") if n > 1 else [s[0]] * 3
    cdf, j = 0.0, 1
    for i in range(n):
        cdf += math.comb(n, i) / 2**n  # P(Binomial(n, 1/2) <= i)
        if 2 * cdf > 1 - level:
            break
        j = i + 1
    coverage = 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n
    return q[0], q[1], q[2], s[j - 1], s[n - j], coverage


def _fmt(sp: tuple[float, ...]) -> str:
    """Median (distribution-free interval of the median; interquartile range)."""
    return (
        f"{sp[1]:.3f} ({sp[5]:.0%} interval of the median {sp[3]:.3f} - {sp[4]:.3f}; "
        f"interquartile range {sp[0]:.3f} - {sp[2]:.3f})"
    )
