"""Section 4: trainer overhead -- ``debiascl train`` vs a minimal hand-written loop.

Both sides do the same work on the same data: the Fashion-MNIST training subset of
``batch x steps`` images (one epoch of ``steps`` steps), the built-in ``simclr`` two-view
augmentation (one batched kornia call per step), the library's small CNN (width 16) + projection
head, AdamW with the warm-up + cosine schedule, and either SogCLR + GloFND (masking from the
first step) or InfoNCE. No evaluation.

* **trainer**: ``Trainer(cfg, run_dir).fit(evaluate=False)``, which is what ``debiascl train
  --no-eval`` runs: run directory, lock, resolved config, TensorBoard scalars every
  ``log_every`` steps, the per-step all-rank flag check, non-finite loss and gradient guards, the
  epoch record in ``metrics.jsonl``, detection diagnostics, ``removed_pairs.csv``, the final
  checkpoint and ``summary.json``.
* **hand loop**: the same components (``create_model``, ``build_objective``, ``make_augment``,
  ``make_loader``, AdamW, ``warmup_cosine``) in about twenty lines: augment, encode, objective,
  backward, step. It keeps the per-step loss as a tensor and reads it once at the end.

The two sides alternate run by run in one process (CPU time of the process, so a shared machine's
other jobs do not count; wall time shown too); the report is medians and the ratio trainer / hand
loop of the training phase (``fit`` vs the loop) and of the whole run including construction.
The sanity line checks that both reach the same loss (epoch mean) and the same weights, bit for
bit: same seed, same data order, same augmentation draws.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import table
from debiascl.compose import build_data, build_objective
from debiascl.config import RunConfig, load_config
from debiascl.data.augment import make_augment
from debiascl.data.build import make_loader
from debiascl.models.build import create_model
from debiascl.objectives import StepContext
from debiascl.seeding import seed_everything
from debiascl.train.optim import warmup_cosine
from debiascl.train.trainer import Trainer

OBJECTIVES = {
    "SogCLR + GloFND": [
        "negatives.update_start_epoch=0",  # the detector learns and masks from the first step
        "negatives.start_epoch=0",
    ],
    "InfoNCE": [
        "loss.name=infonce",
        "loss.sogclr=null",
        "negatives.name=none",
        "negatives.glofnd=null",
    ],
}


def make_config(objective: str, batch: int, steps: int) -> RunConfig:
    """The run: ``fmnist_simclr_glofnd`` cut to one epoch of ``steps`` steps of ``batch``."""
    overrides = [
        f"data.train_size={batch * steps}",
        f"train.batch_size={batch}",
        "train.epochs=1",
        "train.device=cpu",
        "optim.warmup_epochs=0.5",
        *OBJECTIVES[objective],
    ]
    return load_config("fmnist_simclr_glofnd", overrides)


def _stamp(stamps: list[tuple[float, float]]) -> None:
    stamps.append((time.process_time(), time.perf_counter()))


def _per_step(stamps: list[tuple[float, float]]) -> tuple[float, float]:
    """Median (CPU, wall) seconds between consecutive step starts: one whole loop iteration
    (next batch, bookkeeping, step)."""
    return (
        statistics.median(b[0] - a[0] for a, b in itertools.pairwise(stamps)),
        statistics.median(b[1] - a[1] for a, b in itertools.pairwise(stamps)),
    )


def run_trainer(cfg: RunConfig) -> dict[str, Any]:
    """``debiascl train --no-eval`` in this process; times construction, ``fit`` and each loop
    iteration (a time stamp as each ``train_step`` begins)."""
    t0, c0 = time.perf_counter(), time.process_time()
    stamps: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, run_dir=Path(tmp) / "run")
        inner = trainer.train_step

        def stamped_step(batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
            _stamp(stamps)
            return inner(batch, ctx)

        trainer.train_step = stamped_step  # type: ignore[method-assign]
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.fit(evaluate=False)
        t2, c2 = time.perf_counter(), time.process_time()
        params = [p.detach().clone() for p in trainer.model.parameters()]
        loss = trainer.last_record["loss"]
    return {
        "cpu": (c1 - c0, c2 - c1),
        "wall": (t1 - t0, t2 - t1),
        "step": _per_step(stamps),
        "loss": loss,
        "params": params,
    }


def run_hand_loop(cfg: RunConfig) -> dict[str, Any]:
    """The minimal loop a user writes with the library's components (same maths, same seed)."""
    t0, c0 = time.perf_counter(), time.process_time()
    seed_everything(cfg.seed)
    data = build_data(cfg.data, cfg.seed)
    m = cfg.model
    model = create_model(
        "image_image",
        data.channels,
        encoder=m.encoder,
        width=m.width,
        proj_hidden_dim=m.proj_hidden_dim,
        embed_dim=m.embed_dim,
    )
    objective = build_objective(cfg, data.info)
    augment = make_augment("image_image", data.image_size, data.channels, cfg.data.augment)
    batch = cfg.train.batch_size
    loader = make_loader(data.train, batch, train=True, seed=cfg.seed)
    params = [p for p in nn.ModuleList([model, objective]).parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.optim.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
    )
    steps = len(loader) * cfg.train.epochs
    warmup = round(cfg.optim.warmup_epochs * len(loader))
    scheduler = warmup_cosine(optimizer, warmup, steps, cfg.optim.min_lr_ratio)
    t1, c1 = time.perf_counter(), time.process_time()
    model.train()
    step = 0
    stamps: list[tuple[float, float]] = []
    for epoch in range(cfg.train.epochs):
        loader.sampler.set_epoch(epoch)
        losses = []
        for batch_ in loader:
            _stamp(stamps)
            v1, v2 = augment(batch_["image"])
            a, b = model(torch.cat([v1, v2])).chunk(2)
            ctx = StepContext(epoch=epoch, step=step, training=True, progress=step / steps)
            out = objective(a, b, batch_["index"], batch_["label"], ctx=ctx)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(out.value.detach())
            step += 1
        loss = sum(float(v) for v in losses) / len(losses)  # one read per epoch
    t2, c2 = time.perf_counter(), time.process_time()
    params_out = [p.detach().clone() for p in model.parameters()]
    return {
        "cpu": (c1 - c0, c2 - c1),
        "wall": (t1 - t0, t2 - t1),
        "step": _per_step(stamps),
        "loss": loss,
        "params": params_out,
    }


def compare(objective: str, batch: int, steps: int, rounds: int) -> dict[str, Any]:
    """``rounds`` pairs of runs after one warm-up pair, the order flipping every pair.

    Returns each side's median ms per step, the medians of the per-pair ratios trainer / hand
    loop (per step, whole training phase, whole run), the last pair's losses, and whether losses
    and final weights were identical in every pair.
    """
    cfg = make_config(objective, batch, steps)
    sides = [("trainer", run_trainer), ("hand loop", run_hand_loop)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
    for r in range(rounds + 1):
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            result = fn(cfg)
            if r > 0:
                runs[name].append(result)
    ms_step = {
        name: 1000 * statistics.median(x["step"][0] for x in results)
        for name, results in runs.items()
    }
    pairs = list(zip(runs["trainer"], runs["hand loop"], strict=True))

    def ratio(of: Any) -> float:
        return statistics.median(of(t) / of(h) for t, h in pairs)

    ratios = {
        "step cpu": ratio(lambda x: x["step"][0]),
        "step wall": ratio(lambda x: x["step"][1]),
        "train cpu": ratio(lambda x: x["cpu"][1]),
        "train wall": ratio(lambda x: x["wall"][1]),
        "whole cpu": ratio(lambda x: sum(x["cpu"])),
    }
    same_loss = all(t["loss"] == h["loss"] for t, h in pairs)
    same_params = all(
        torch.equal(p, q) for t, h in pairs for p, q in zip(t["params"], h["params"], strict=True)
    )
    t, h = pairs[-1]
    return {
        "ms_step": ms_step,
        "ratio": ratios,
        "loss": (t["loss"], h["loss"]),
        "same_loss": same_loss,
        "same_params": same_params,
    }


HEADERS = [
    "objective",
    "trainer ms/step",
    "hand loop ms/step",
    "trainer / hand per step",
    "per step (wall)",
    "fit / loop",
    "fit / loop (wall)",
    "whole run",
]


def run(batch: int = 128, steps: int = 16, rounds: int = 4) -> tuple[str, dict]:
    """Section 4 as markdown text, plus the raw numbers."""
    logging.getLogger("debiascl").setLevel(logging.WARNING)
    rows, sanity, results = [], [], {}
    for objective in OBJECTIVES:
        res = compare(objective, batch, steps, rounds)
        results[objective] = res
        r = res["ratio"]
        rows.append(
            [
                objective,
                res["ms_step"]["trainer"],
                res["ms_step"]["hand loop"],
                r["step cpu"],
                r["step wall"],
                r["train cpu"],
                r["train wall"],
                r["whole cpu"],
            ]
        )
        lt, lh = res["loss"]
        sanity.append(
            f"- {objective}: epoch mean loss trainer {lt:.10f}, hand loop {lh:.10f} "
            f"({'equal in every pair' if res['same_loss'] else 'DIFFER'}); final weights "
            f"{'bit-identical in every pair' if res['same_params'] else 'DIFFER'}"
        )
    text = "\n".join(
        [
            f"Batch {batch}, {steps} steps (one epoch of {batch * steps} Fashion-MNIST images), "
            "small CNN width 16 + projection head, `simclr` augmentation, AdamW + warm-up/cosine, "
            "CPU, no evaluation. **Trainer**: `Trainer(cfg).fit(evaluate=False)`, what "
            "`debiascl train --no-eval` runs (run directory and lock, config.yaml, TensorBoard, "
            "per-step flag check, non-finite loss and gradient guards, progress totals, "
            "metrics.jsonl, detection diagnostics, removed_pairs.csv, final checkpoint, "
            "summary.json). **Hand loop**: the same library components (`create_model`, "
            "`build_objective`, `make_augment`, `make_loader`, AdamW, `warmup_cosine`) in a bare "
            "loop: augment, encode, objective, backward, optimiser and schedule step; the loss "
            f"read once per epoch. {rounds} pairs of runs after one warm-up pair, the order "
            "flipping every pair; ratios are medians of the per-pair ratios. Per step: median "
            "time between consecutive step starts (one whole loop iteration: next batch, "
            "bookkeeping, step). fit / loop: the whole training phase, once-per-run and "
            "once-per-epoch costs included. Whole run: construction (data, model, objective) "
            "added on both sides. CPU time of the process unless marked wall.",
            "",
            table(HEADERS, rows),
            "",
            "Same result (sanity: same seed, data order and augmentation draws):",
            "",
            *sanity,
        ]
    )
    return text, results


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    args = [int(x) for x in sys.argv[1:]]
    print(run(*args)[0])
