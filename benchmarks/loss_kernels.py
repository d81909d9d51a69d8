"""Forward + backward cost of the contrastive loss kernels, side by side in one process.

Compares at batch 256, dim 128 (DESIGN 6): a plain NT-Xent written with ``F.cross_entropy``
(the fastest formulation without masks), debiascl's ``nt_xent`` (in one process a fused node
with a hand-written backward; takes keep-masks; under DDP the general pair path), lightly's
``NTXentLoss``, and debiascl's objective with InfoNCE, SogCLR, DCL and SogCLR + GloFND. Calls
alternate round-robin and the report is medians and ratios to the plain kernel (timings on shared
machines move 1.3-4x between processes; ratios are steadier).

Run:
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 \
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loss_kernels.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from debiascl.losses import nt_xent
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, InfoNCELoss, StepContext
from debiascl.objectives.debiased_loss import DebiasedLoss
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss


def plain_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Reference formulation: cross-entropy over the 2B x 2B logits with the diagonal masked."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    logits = (z @ z.T / t).fill_diagonal_(float("-inf"))
    target = torch.arange(n, device=z.device).roll(n // 2)
    return F.cross_entropy(logits, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    b, d, t = args.batch, args.dim, 0.2
    n_ids = 10 * b
    objectives = {
        "objective: InfoNCE": ContrastiveObjective("image_image", InfoNCELoss(), num_samples=n_ids),
        "objective: SogCLR": ContrastiveObjective(
            "image_image", GlobalContrastiveLoss(n_ids), num_samples=n_ids
        ),
        "objective: DCL eta=0.1": ContrastiveObjective(
            "image_image", DebiasedLoss(eta=0.1), num_samples=n_ids
        ),
        "objective: SogCLR+GloFND": ContrastiveObjective(
            "image_image",
            GlobalContrastiveLoss(n_ids),
            GloFNDDetector(n_ids, alpha=0.05, init="batch_quantile"),
            num_samples=n_ids,
        ),
    }
    lightly_loss = None
    try:
        from lightly.loss import NTXentLoss

        lightly_loss = NTXentLoss(temperature=t)
    except ImportError:
        pass
    g = torch.Generator().manual_seed(0)
    base1, base2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    step = [0]

    def run(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        z1, z2 = base1.clone().requires_grad_(), base2.clone().requires_grad_()
        start = time.perf_counter()
        loss_fn(z1, z2).backward()
        return time.perf_counter() - start

    def objective_call(obj: ContrastiveObjective) -> Callable:
        def call(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
            ids = torch.randperm(n_ids, generator=g)[:b]
            step[0] += 1
            return obj(z1, z2, ids, logit_scale=1 / t, ctx=StepContext(step=step[0])).loss

        return call

    kernels: dict[str, Callable] = {
        "plain cross_entropy NT-Xent": lambda a, c: plain_nt_xent(a, c, t),
        "debiascl nt_xent": lambda a, c: nt_xent(a, c, t),
    }
    if lightly_loss is not None:
        kernels["lightly NTXentLoss"] = lightly_loss
    kernels.update({name: objective_call(obj) for name, obj in objectives.items()})
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(3):  # warm-up (first visits of the tables included)
        for fn in kernels.values():
            run(fn)
    for _ in range(args.rounds):
        for name, fn in kernels.items():
            times[name].append(run(fn))
    base = statistics.median(times["plain cross_entropy NT-Xent"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {b}, dim {d}")
    print(f"{'kernel (forward + backward)':32s} {'median ms':>10s} {'x plain':>8s}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:32s} {1000 * med:10.2f} {med / base:8.2f}")


if __name__ == "__main__":
    main()
