"""GloFND's per-step cost, and the cost of its per-sample tables as the id space grows.

Prints, from one process with alternating calls and medians (DESIGN 6: compare in-process):

1. a full SimCLR training step at batch 256 (small CNN on 28x28 inputs, SogCLR loss with GloFND,
   backward, AdamW) and GloFND's own work timed inside that same step (threshold update +
   keep-mask, with the similarities fresh in cache as in real training), and the share of the
   step that GloFND takes (median over steps of the per-step ratio);
2. the per-step table operations (GloFND's lambda/Adam table and SogCLR's u table: read + write
   of the batch's ids) at N = 10^3 and N = 10^7, and their ratio.

Run:
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 \
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/glofnd_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss


def build_encoder(embed_dim: int = 128) -> nn.Module:
    """The library's small CNN + projection head, or an equivalent torch.nn stack."""
    try:
        from debiascl.models.encoders import SmallCNN
        from debiascl.models.heads import projection_head

        body = SmallCNN(in_channels=1, width=16)
        return nn.Sequential(body, projection_head(body.feature_dim, 256, embed_dim))
    except ImportError:  # models package not available: same shape of network from torch.nn
        layers: list[nn.Module] = []
        prev = 1
        for i, w in enumerate([16, 32, 64, 128]):
            layers += [
                nn.Conv2d(prev, w, 3, 1 if i == 0 else 2, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
            ]
            prev = w
        return nn.Sequential(
            *layers,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(prev, 256),
            nn.ReLU(),
            nn.Linear(256, embed_dim),
        )


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


class TimedDetector(nn.Module):
    """Wraps a detector and records the wall time of each call made inside the training step."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.last = 0.0

    def forward(self, batch, ctx):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        keep = self.inner(batch, ctx)
        self.last = time.perf_counter() - t0
        return keep


def step_share(batch: int, repeats: int, num_samples: int) -> None:
    torch.manual_seed(0)
    encoder = build_encoder()
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    detector = TimedDetector(GloFNDDetector(num_samples, alpha=0.05, init="batch_quantile"))
    objective = ContrastiveObjective(
        "image_image", GlobalContrastiveLoss(num_samples), detector, num_samples=num_samples
    )
    x1, x2 = torch.randn(batch, 1, 28, 28), torch.randn(batch, 1, 28, 28)
    # Steady state (after the first epoch): every measured id has been visited before, so the
    # numbers show the per-step update, not the one-off batch-quantile initialisation.
    pool = torch.randperm(num_samples)[: 4 * batch]
    warm = list(pool.split(batch))
    ids_list = warm + [pool[torch.randperm(pool.numel())[:batch]] for _ in range(repeats)]

    def train_step(ids: torch.Tensor) -> None:
        out = objective(encoder(x1), encoder(x2), ids, logit_scale=5.0, ctx=StepContext())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    for i in range(len(warm)):  # warm-up: visits every id of the pool
        train_step(ids_list[i])
    steps, glofnd, shares = [], [], []
    for i in range(len(warm), len(ids_list)):
        steps.append(timed(lambda i=i: train_step(ids_list[i])))
        glofnd.append(detector.last)
        shares.append(detector.last / steps[-1])
    step_ms, det_ms = median_ms(steps), median_ms(glofnd)
    print(
        f"full training step, batch {batch} (small CNN 28x28, SogCLR + GloFND, AdamW): "
        f"{step_ms:.1f} ms (median of {repeats})"
    )
    print(f"GloFND threshold update + keep-mask inside that step:             {det_ms:.3f} ms")
    print(
        f"GloFND share of the step (median of per-step ratios):             "
        f"{100 * statistics.median(shares):.2f} %"
    )


def table_scaling(batch: int, repeats: int, sizes: tuple[int, int]) -> None:
    torch.manual_seed(1)
    setups = {}
    for n in sizes:
        lam = GloFNDDetector(n, alpha=0.05).tables["image"]
        u = GlobalContrastiveLoss(n).tables["image"]
        ids = [
            torch.randperm(n)[:batch]
            if n < 10 * batch
            else torch.unique(torch.randint(0, n, (batch + 8,)))[:batch]
            for _ in range(repeats)
        ]
        setups[n] = (lam, u, ids)

    def table_ops(n: int, i: int) -> None:
        lam, u, ids = setups[n]
        rows = lam.read(ids[i])
        lam.write(ids[i], rows)
        urows = u.read(ids[i])
        u.write(ids[i], urows)

    times: dict[int, list[float]] = {n: [] for n in sizes}
    for i in range(repeats):  # alternate the two sizes call by call
        for n in sizes:
            times[n].append(timed(lambda n=n, i=i: table_ops(n, i)))
    small, large = (median_ms(times[n]) for n in sizes)
    print(f"table ops per step ({batch} ids: lambda/m/v/visits + log_u/visits, read + write):")
    print(f"  N = {sizes[0]:>10,}: {small:.4f} ms")
    print(f"  N = {sizes[1]:>10,}: {large:.4f} ms")
    print(f"  ratio N=1e7 / N=1e3: {large / small:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--table-repeats", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=60_000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    step_share(args.batch, args.repeats, args.num_samples)
    table_scaling(args.batch, args.table_repeats, (1_000, 10_000_000))


if __name__ == "__main__":
    main()
