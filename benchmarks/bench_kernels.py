"""Section 1: loss kernels (forward + backward) against peer libraries and naive formulas.

At each batch size B with (B, 128) embeddings, in one process with interleaved calls:

* debiascl ``nt_xent`` vs lightly ``NTXentLoss``;
* the SogCLR objective vs LibAUC ``GCLoss`` (unimodal; and bimodal vs ``GCLoss('bimodal')``);
* SogCLR + GloFND vs LibAUC ``GCLoss`` alone (GloFND is extra work LibAUC does not do);
* DCL and HCL objectives vs the same formulas written naively (Chuang et al. 2020, Robinson et
  al. 2021: explicit exp of the similarity matrix, masks as multiplications).

Objectives are the full ``ContrastiveObjective`` (id checks, pair layout, per-sample tables,
detection statistics). Ids are drawn from N = 4 B. Before timing, each table-keeping kernel (ours
and LibAUC's) sweeps every id once in batches of B, so every timed call is in the steady state of
an epoch after the first: no id is on its first visit (GloFND's first-visit threshold
initialisation, a per-row partial sort, is once-per-id work and is not timed here).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved, table
from debiascl.losses import nt_xent
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.debiased_loss import DebiasedLoss
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss

T = 0.2
DIM = 128


def naive_debiased(z1: torch.Tensor, z2: torch.Tensor, eta: float, beta: float) -> torch.Tensor:
    """DCL (beta = 0) / HCL written directly from the papers' formulas, SimCLR layout."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    b = n2 // 2
    sim = torch.exp(z @ z.T / T)
    idx = torch.arange(n2)
    pos = sim[idx, (idx + b) % n2]
    neg_mask = torch.ones(n2, n2)
    neg_mask[idx, idx] = 0
    neg_mask[idx, (idx + b) % n2] = 0
    neg = sim * neg_mask
    n = n2 - 2
    if beta > 0:
        imp = (beta * (z @ z.T / T)).exp() * neg_mask
        reweight = (imp * neg).sum(1) / (imp.sum(1) / n)
    else:
        reweight = neg.sum(1)
    ng = (reweight - n * eta * pos) / (1 - eta)
    ng = torch.clamp(ng, min=n * torch.exp(torch.tensor(-1 / T)))
    return -torch.log(pos / (pos + ng)).mean()


def _libauc(mode: str, n: int) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # GCLoss prints its gamma schedule
        from libauc.losses import GCLoss

        return GCLoss(mode, N=n, tau=T, gamma=0.9, device=torch.device("cpu"))


def _kernels(b: int, gen: torch.Generator) -> tuple[dict[str, Callable[..., Any]], int]:
    n = 4 * b
    step = [0]

    def ids() -> torch.Tensor:
        return torch.randperm(n, generator=gen)[:b]

    def sweep(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> None:
        """Visit every id once (batches of b), so timed calls see no first visits."""
        for chunk in torch.randperm(n, generator=gen).split(b):
            a, c = torch.randn(b, DIM, generator=gen), torch.randn(b, DIM, generator=gen)
            with torch.no_grad():
                fn(a, c, chunk)

    def objective(mode: str, loss: Any, detector: Any = None) -> Callable[..., Any]:
        obj = ContrastiveObjective(mode, loss, detector, num_samples=n)
        sweep(lambda a, c, i: obj(a, c, i, logit_scale=1 / T, ctx=StepContext(step=0)))

        def call(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            step[0] += 1
            return obj(a, c, ids(), logit_scale=1 / T, ctx=StepContext(step=step[0])).loss

        return call

    out: dict[str, Callable[..., Any]] = {
        "debiascl nt_xent": lambda a, c: nt_xent(a, c, T),
        "SogCLR objective": objective("image_image", GlobalContrastiveLoss(n)),
        "SogCLR + GloFND objective": objective(
            "image_image",
            GlobalContrastiveLoss(n),
            GloFNDDetector(n, alpha=0.05, init="batch_quantile"),
        ),
        "SogCLR bimodal objective": objective(
            "image_text", GlobalContrastiveLoss(n, mode="image_text")
        ),
        "DCL objective": objective("image_image", DebiasedLoss(eta=0.1)),
        "HCL objective": objective("image_image", DebiasedLoss(eta=0.1, beta=1.0)),
        "naive DCL": lambda a, c: naive_debiased(a, c, 0.1, 0.0),
        "naive HCL": lambda a, c: naive_debiased(a, c, 0.1, 1.0),
    }
    with contextlib.suppress(ImportError):
        from lightly.loss import NTXentLoss

        out["lightly NTXentLoss"] = NTXentLoss(temperature=T)
    with contextlib.suppress(ImportError):
        uni, bi = _libauc("unimodal", n), _libauc("bimodal", n)
        sweep(uni)
        sweep(lambda a, c, i: bi(F.normalize(a, dim=1), F.normalize(c, dim=1), i))
        out["LibAUC GCLoss"] = lambda a, c: uni(a, c, ids())
        out["LibAUC GCLoss bimodal"] = lambda a, c: bi(  # returns (loss, taus)
            F.normalize(a, dim=1), F.normalize(c, dim=1), ids()
        )[0]
    return out, n


RATIOS = [
    ("nt_xent / lightly NTXentLoss", "debiascl nt_xent", "lightly NTXentLoss"),
    ("SogCLR / LibAUC GCLoss", "SogCLR objective", "LibAUC GCLoss"),
    ("SogCLR bimodal / LibAUC GCLoss bimodal", "SogCLR bimodal objective", "LibAUC GCLoss bimodal"),
    ("SogCLR + GloFND / LibAUC GCLoss", "SogCLR + GloFND objective", "LibAUC GCLoss"),
    ("DCL objective / naive DCL", "DCL objective", "naive DCL"),
    ("HCL objective / naive HCL", "HCL objective", "naive HCL"),
]


def run(sizes: tuple[int, ...] = (256, 512, 1024), rounds: int = 15) -> tuple[str, dict]:
    """Markdown report and ``{(ratio name, B): value}``."""
    gen = torch.Generator().manual_seed(0)
    results: dict[tuple[str, int], float] = {}
    medians: dict[int, dict[str, float]] = {}
    for b in sizes:
        kernels, _ = _kernels(b, gen)
        base1, base2 = torch.randn(b, DIM, generator=gen), torch.randn(b, DIM, generator=gen)

        def timed_call(
            fn: Callable[..., Any], x1: torch.Tensor = base1, x2: torch.Tensor = base2
        ) -> Callable[[], None]:
            def call() -> None:
                a, c = x1.clone().requires_grad_(), x2.clone().requires_grad_()
                fn(a, c).backward()

            return call

        med = interleaved({k: timed_call(f) for k, f in kernels.items()}, rounds, warmup=8)
        medians[b] = med
        for name, num, den in RATIOS:
            if num in med and den in med:
                results[(name, b)] = med[num] / med[den]
    names = [name for name, _, _ in RATIOS if any((name, b) in results for b in sizes)]
    rows = [[name] + [results.get((name, b), float("nan")) for b in sizes] for name in names]
    text = table(["ratio (CPU time, fwd + bwd)"] + [f"B = {b}" for b in sizes], rows)
    kernel_names = sorted(medians[sizes[0]])
    abs_rows = [[k] + [1e3 * medians[b].get(k, float("nan")) for b in sizes] for k in kernel_names]
    text += "\n\nMedian CPU ms per call:\n\n" + table(
        ["kernel"] + [f"B = {b}" for b in sizes], abs_rows
    )
    return text, results
