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

Measured three ways in one process (CPU time of the process, so a shared machine's other jobs
do not count; wall time beside it):

* **per step**, lock step: the trainer's ``train_step`` first advances the hand loop by one step
  (each loop with its own torch RNG state), so the two alternate iteration by iteration under the
  same machine load; median of the per-iteration ratios trainer / hand loop;
* **fit / loop** and **whole run**: separate runs, the order flipping every pair; medians of the
  per-pair ratios of the training phase (``fit`` vs the loop, once-per-run and once-per-epoch
  costs included) and of construction + training;
* **bookkeeping**: ``fit`` with a no-op ``train_step`` minus a bare pass over the same loader,
  the trainer's own work per run without any step noise.

The sanity line checks that both reach the same loss (epoch mean) and the same weights, bit for
bit, in every comparison: same seed, same data order, same augmentation draws.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
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
        "negatives.alpha=null",
        "negatives.start_epoch=null",
        "negatives.update_start_epoch=null",
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


def run_trainer(cfg: RunConfig) -> dict[str, Any]:
    """``debiascl train --no-eval`` in this process; times construction and ``fit``."""
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, run_dir=Path(tmp) / "run")
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.fit(evaluate=False)
        t2, c2 = time.perf_counter(), time.process_time()
        params = [p.detach().clone() for p in trainer.model.parameters()]
        loss = trainer.last_record["loss"]
    return {"cpu": (c1 - c0, c2 - c1), "wall": (t1 - t0, t2 - t1), "loss": loss, "params": params}


def build_hand_loop(cfg: RunConfig) -> tuple[Iterator[None], dict[str, Any]]:
    """The minimal loop a user writes with the library's components (same maths, same seed).

    Builds everything now; returns a generator that runs one step per ``next`` (fetching its
    batch first) and, once exhausted, the dict it fills with the epoch mean loss and the final
    weights.
    """
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
    loader = make_loader(data.train, cfg.train.batch_size, train=True, seed=cfg.seed)
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
    result: dict[str, Any] = {}

    def loop() -> Iterator[None]:
        model.train()
        step = 0
        for epoch in range(cfg.train.epochs):
            loader.sampler.set_epoch(epoch)
            losses = []
            for batch in loader:
                v1, v2 = augment(batch["image"])
                a, b = model(torch.cat([v1, v2])).chunk(2)
                ctx = StepContext(epoch=epoch, step=step, training=True, progress=step / steps)
                out = objective(a, b, batch["index"], batch["label"], ctx=ctx)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(out.value.detach())
                step += 1
                yield
            result["loss"] = sum(float(v) for v in losses) / len(losses)  # one read per epoch
        result["params"] = [p.detach().clone() for p in model.parameters()]

    return loop(), result


def run_hand_loop(cfg: RunConfig) -> dict[str, Any]:
    """The hand loop from scratch; times construction and the loop."""
    t0, c0 = time.perf_counter(), time.process_time()
    steps, result = build_hand_loop(cfg)
    t1, c1 = time.perf_counter(), time.process_time()
    for _ in steps:
        pass
    t2, c2 = time.perf_counter(), time.process_time()
    return {"cpu": (c1 - c0, c2 - c1), "wall": (t1 - t0, t2 - t1), **result}


def lockstep(cfg: RunConfig) -> dict[str, Any]:
    """Trainer and hand loop advanced step by step in turn: each trainer step first runs one
    hand-loop step (with its own torch RNG state, so both draw what they draw alone).

    Returns the (CPU, wall) seconds of each side's loop iterations (the trainer's: from the end
    of one hand step to the start of the next, i.e. its step, bookkeeping and next batch), the
    (CPU, wall) ratios trainer / hand loop of the whole training phase (``fit`` less the hand
    steps run inside it, over the sum of the hand steps), plus both losses and final weights.
    """
    hand_steps, hand = build_hand_loop(cfg)
    rng = {"hand": torch.get_rng_state()}
    spans: list[tuple[float, float, float, float]] = []  # hand step start / end (CPU, wall)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, run_dir=Path(tmp) / "run")  # seeds the global RNG again
        inner = trainer.train_step

        def step_both(batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
            c0, t0 = time.process_time(), time.perf_counter()
            own = torch.get_rng_state()
            torch.set_rng_state(rng["hand"])
            next(hand_steps)
            rng["hand"] = torch.get_rng_state()
            torch.set_rng_state(own)
            spans.append((c0, time.process_time(), t0, time.perf_counter()))
            return inner(batch, ctx)

        trainer.train_step = step_both  # type: ignore[method-assign]
        c0, t0 = time.process_time(), time.perf_counter()
        trainer.fit(evaluate=False)
        fit = (time.process_time() - c0, time.perf_counter() - t0)
        for _ in hand_steps:  # finish the generator (fills the loss and weights)
            pass
        params = [p.detach().clone() for p in trainer.model.parameters()]
        loss = trainer.last_record["loss"]
    hand_cpu, hand_wall = sum(s[1] - s[0] for s in spans), sum(s[3] - s[2] for s in spans)
    return {
        "fit": ((fit[0] - hand_cpu) / hand_cpu, (fit[1] - hand_wall) / hand_wall),
        "trainer": [(b[0] - a[1], b[2] - a[3]) for a, b in itertools.pairwise(spans)],
        "hand loop": [(s[1] - s[0], s[3] - s[2]) for s in spans],
        "loss": (loss, hand["loss"]),
        "same_params": all(torch.equal(p, q) for p, q in zip(params, hand["params"], strict=True)),
    }


def bookkeeping(cfg: RunConfig, rounds: int) -> tuple[float, float]:
    """The trainer's own work around the steps, in (CPU, wall) ms per run: ``fit`` with
    ``train_step`` replaced by a no-op, minus one bare pass over the same loader (what a hand
    loop with an empty body costs). Medians of ``rounds`` alternating calls after one warm-up.
    What stays in ``train_step`` (non-finite guards, reading the loss) is not in it."""

    def fit_without_steps() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, run_dir=Path(tmp) / "run")
            trainer.train_step = lambda batch, ctx: {"loss": 0.0}  # type: ignore[method-assign]
            c, t = time.process_time(), time.perf_counter()
            trainer.fit(evaluate=False)
            return time.process_time() - c, time.perf_counter() - t

    def bare_pass() -> tuple[float, float]:
        data = build_data(cfg.data, cfg.seed)
        loader = make_loader(data.train, cfg.train.batch_size, train=True, seed=cfg.seed)
        c, t = time.process_time(), time.perf_counter()
        for _ in loader:
            pass
        return time.process_time() - c, time.perf_counter() - t

    fit_without_steps(), bare_pass()
    fits, passes = [], []
    for _ in range(rounds):
        fits.append(fit_without_steps())
        passes.append(bare_pass())
    return tuple(  # type: ignore[return-value]
        1000 * (statistics.median(f[i] for f in fits) - statistics.median(b[i] for b in passes))
        for i in (0, 1)
    )


def compare(objective: str, batch: int, steps: int, rounds: int) -> dict[str, Any]:
    """Both measurements for one objective after a warm-up: ``rounds`` lock-step runs and
    ``max(1, rounds // 2)`` pairs of separate runs (the order flipping every pair).

    Returns (lock step) the median ms per loop iteration of each side, the median of the
    per-iteration ratios and the median ratio of the training phases; (separate runs) the
    medians of the per-pair ratios of the training phase and of the whole run; the trainer's own
    work per run (:func:`bookkeeping`); the last losses, and whether losses and final weights
    were identical every time.
    """
    cfg = make_config(objective, batch, steps)
    sides = [("trainer", run_trainer), ("hand loop", run_hand_loop)]
    lockstep(cfg)  # warm-up
    locks = [lockstep(cfg) for _ in range(rounds)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
    for r in range(max(1, rounds // 2)):
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            runs[name].append(fn(cfg))
    # trainer iteration i (between hand steps i and i + 1) with hand step i; the last hand step
    # has no trainer iteration after it
    iters = [
        (t, h) for lock in locks for t, h in zip(lock["trainer"], lock["hand loop"], strict=False)
    ]
    pairs = list(zip(runs["trainer"], runs["hand loop"], strict=True))

    def ratio(of: Any) -> float:
        return statistics.median(of(t) / of(h) for t, h in pairs)

    ratios = {
        "step cpu": statistics.median(t[0] / h[0] for t, h in iters),
        "step wall": statistics.median(t[1] / h[1] for t, h in iters),
        "fit cpu": statistics.median(lock["fit"][0] for lock in locks),
        "fit wall": statistics.median(lock["fit"][1] for lock in locks),
        "train cpu": ratio(lambda x: x["cpu"][1]),
        "train wall": ratio(lambda x: x["wall"][1]),
        "whole cpu": ratio(lambda x: sum(x["cpu"])),
    }
    losses = [lock["loss"] for lock in locks] + [(t["loss"], h["loss"]) for t, h in pairs]
    same_params = all(lock["same_params"] for lock in locks) and all(
        torch.equal(p, q) for t, h in pairs for p, q in zip(t["params"], h["params"], strict=True)
    )
    return {
        "bookkeeping": bookkeeping(cfg, max(2, rounds)),
        "hand train": [
            statistics.median(h["cpu"][1] for _, h in pairs),
            statistics.median(h["wall"][1] for _, h in pairs),
        ],
        "ms_step": {
            "trainer": 1000 * statistics.median(t[0] for t, _ in iters),
            "hand loop": 1000 * statistics.median(h[0] for _, h in iters),
        },
        "ratio": ratios,
        "loss": losses[-1],
        "same_loss": all(a == b for a, b in losses),
        "same_params": same_params,
        "runs": len(losses),
    }


HEADERS = [
    "objective",
    "trainer ms/step",
    "hand loop ms/step",
    "trainer / hand: per step",
    "per step (wall)",
    "fit / loop",
    "fit / loop (wall)",
    "fit / loop, separate runs",
    "whole run, separate runs",
]


def run(batch: int = 128, steps: int = 16, rounds: int = 4) -> tuple[str, dict]:
    """Section 4 as markdown text, plus the raw numbers."""
    logging.getLogger("debiascl").setLevel(logging.WARNING)
    rows, books, sanity, results = [], [], [], {}
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
                r["fit cpu"],
                r["fit wall"],
                r["train cpu"],
                r["whole cpu"],
            ]
        )
        (bc, bw), (hc, hw) = res["bookkeeping"], res["hand train"]
        books.append(
            f"- {objective}: {bc:.0f} ms CPU ({100 * bc / (1000 * hc):.1f}% of the hand loop's "
            f"training phase), {bw:.0f} ms wall ({100 * bw / (1000 * hw):.1f}%)"
        )
        lt, lh = res["loss"]
        sanity.append(
            f"- {objective}: epoch mean loss trainer {lt:.10f}, hand loop {lh:.10f} "
            f"({'equal' if res['same_loss'] else 'DIFFER'} in all {res['runs']} comparisons); "
            f"final weights {'bit-identical' if res['same_params'] else 'DIFFER'}"
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
            "read once per epoch.",
            "",
            f"Lock step ({rounds} runs): the two loops advanced one step each in turn, each "
            "with its own RNG state, so both run under the same machine load. Per step: median "
            "of the per-iteration ratios, an iteration being the next batch, the step and the "
            "bookkeeping around it. fit / loop: median ratio of the whole training phases "
            "(`fit()`, once-per-run and once-per-epoch costs included, less the hand steps run "
            f"inside it, vs the sum of the hand steps). Separate runs ({max(1, rounds // 2)} "
            "pairs, the order flipping every pair, median of the per-pair ratios; noisier on a "
            "shared machine): the training phase, and the whole run with construction (data, "
            "model, objective) on both sides. CPU time of the process unless marked wall.",
            "",
            table(HEADERS, rows),
            "",
            "The trainer's own work per run (`fit` with a no-op `train_step`, minus a bare pass "
            "over the same loader; the per-step guards inside `train_step` are not in it):",
            "",
            *books,
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
