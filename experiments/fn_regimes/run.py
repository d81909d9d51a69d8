"""The false-negative regime study (issue 13): when does removing false negatives pay off?

One command runs every cell (a regime x a method x a seed), skipping finished runs, and writes
``docs/experiments/fn_regimes.md``::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/fn_regimes/run.py all --workers 2

Phases (each resumable; ``--workers`` splits the runs over that many processes):
    ``tune``: every candidate setting of every detector, on a validation split held out of the
        training data (``data.validation_size``), seed 100 (not a reported seed). The setting
        with the best validation score is chosen per regime; the test split is never read.
    ``test``: none / each detector at its chosen setting / oracle, seeds 0..N-1, on the test
        split (same seed = same data, initialisation and order until masking starts: paired).
    ``report``: per regime and method, the mean paired difference to none with a t interval,
        the share of the oracle gain recovered, (method - none) / (oracle - none) over the
        seed means, with a percentile bootstrap interval over seeds, and the training-set
        detection precision / recall of the last epoch.

Regimes are built from the built-in Fashion-MNIST (``data.classes`` picks the class subset, hence
the false-negative base rate; ``data.subsample_classes`` makes one class dominant). They are
synthetic and small (CPU-sized): the captions are class templates, so text evidence is strong by
construction -- docs/experiments/fn_regimes.md says what that does and does not show.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from multiprocessing import Process
from pathlib import Path
from typing import Any

import numpy as np

from debiascl.report import metric_at

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fn_stats import (
    METRIC_NAMES,
    _pct,
    markdown,
    merged,
    merged_table,
    share_interval,
    t_interval,
)
from regimes import (
    COMMON,
    METHODS,
    REGIMES,
    TUNE_SEED,
    VALIDATION,
    methods_of,
    overrides_of,
)

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
DOC = HERE.parents[1] / "docs" / "experiments" / "fn_regimes.md"


def jobs(
    phase: str,
    seeds: list[int],
    chosen: dict[str, dict[str, str]],
    methods: list[str] | None = None,
) -> list[tuple]:
    """(run_dir, config, overrides, seed) of every run of a phase (``methods``: only these)."""
    out = []
    for regime, (base, _, _) in REGIMES.items():
        for method in methods_of(regime):
            if methods and method not in methods:
                continue
            candidates = METHODS[method]
            if phase == "tune":
                if len(candidates) < 2:
                    continue
                for label in candidates:
                    run = RUNS / "tune" / regime / f"{method}_{label}"
                    over = overrides_of(regime, method, label)
                    out.append((run, base, [*over, *VALIDATION], TUNE_SEED))
            else:
                label = chosen.get(regime, {}).get(method, next(iter(candidates)))
                for seed in seeds:
                    run = RUNS / "test" / regime / method / f"seed{seed}"
                    out.append((run, base, overrides_of(regime, method, label), seed))
    return out


def run_one(run_dir: Path, base: list[str], overrides: list[str], seed: int) -> None:
    from debiascl.config import load_config
    from debiascl.train.trainer import Trainer

    config, *base_over = base
    cfg = load_config(
        config,
        [*COMMON, *base_over, *overrides, f"seed={seed}", f"output_dir={run_dir.parent}"],
    )
    Trainer(cfg, run_dir=run_dir).fit(evaluate=True)


def _worker(todo: list[tuple], index: int, workers: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    for i, (run, base, over, seed) in enumerate(todo):
        if i % workers != index or (run / "summary.json").exists():
            continue
        t0 = time.perf_counter()
        run_one(run, base, over, seed)
        print(f"done {run.relative_to(RUNS)} in {time.perf_counter() - t0:.0f} s", flush=True)


def execute(todo: list[tuple], workers: int) -> None:
    procs = [Process(target=_worker, args=(todo, i, workers)) for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise SystemExit(f"a worker failed (exit codes {failed}); see the log above")


def score(run: Path, path: str) -> float:
    file = run / "summary.json"
    return metric_at(json.loads(file.read_text()), path) if file.exists() else math.nan


def choose() -> dict[str, dict[str, str]]:
    """The best validation setting of each tuned method per regime."""
    chosen: dict[str, dict[str, str]] = {}
    for regime, (_, metrics, _) in REGIMES.items():
        for method in methods_of(regime):
            cands = METHODS[method]
            if len(cands) < 2:
                continue
            scores = {
                lab: statistics.fmean(
                    score(RUNS / "tune" / regime / f"{method}_{lab}", m) for m in metrics
                )
                for lab in cands
            }
            finite = {k: v for k, v in scores.items() if math.isfinite(v)}
            if finite:
                chosen.setdefault(regime, {})[method] = max(finite, key=finite.__getitem__)
    return chosen


DETECTION = [
    ("removed", "fn_detection/removed_fraction"),
    ("precision", "fn_detection/precision"),
    ("recall", "fn_detection/recall"),
]


def _cell(runs: Path, regime: str, metric: str, seeds: list[int]) -> dict[str, Any]:
    """One metric of one regime: scores, paired differences to none, recovered share.

    Each method is compared on the seeds where it, none and the oracle all finished.
    """
    score_of = {
        m: {s: score(runs / m / f"seed{s}", metric) for s in seeds} for m in methods_of(regime)
    }
    rows: dict[str, Any] = {}
    for m in methods_of(regime):
        have = [
            s for s in seeds if all(math.isfinite(score_of[k][s]) for k in (m, "none", "oracle"))
        ]
        vals = [score_of[m][s] for s in have]
        diffs = [score_of[m][s] - score_of["none"][s] for s in have]
        d_oracle = [score_of["oracle"][s] - score_of["none"][s] for s in have]
        row: dict[str, Any] = {
            "seeds": have,
            "scores": vals,
            "mean": statistics.fmean(vals) if vals else math.nan,
            "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
        }
        if m != "none" and len(have) > 1:
            row["diff"] = t_interval(diffs)
            oracle_lo = t_interval(d_oracle)[1]
            if m != "oracle" and oracle_lo > 0:  # a share of a gain that is not there is noise
                row["share"] = share_interval(np.array(diffs), np.array(d_oracle))
        rows[m] = row
    return {"seeds": rows["none"]["seeds"], "rows": rows}


def analyse(seeds: list[int], chosen: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Per regime: each metric's cell, and each method's setting and detection quality."""
    out: dict[str, Any] = {}
    for regime, (_, metrics, label) in REGIMES.items():
        runs = RUNS / "test" / regime
        if not (runs / "none").is_dir():
            continue  # a regime not run (yet)
        detection = {}
        for m in methods_of(regime):
            det = {}
            for name, key in DETECTION:
                vals = [score(runs / m / f"seed{s}", key) for s in seeds]
                vals = [v for v in vals if math.isfinite(v)]
                det[name] = statistics.fmean(vals) if vals else math.nan
            detection[m] = det
        out[regime] = {
            "label": label,
            "settings": {m: chosen.get(regime, {}).get(m, "") for m in methods_of(regime)},
            "detection": detection,
            "metrics": {metric: _cell(runs, regime, metric, seeds) for metric in metrics},
        }
    return out


def validation_table() -> str:
    """The tuning runs: each candidate's validation scores (seed 100), per regime."""
    lines = [
        "| regime | candidate | metrics on validation (%) | mean | removed % | precision % |",
        "|---|---|---|---|---|---|",
    ]
    for regime, (_, metrics, _) in REGIMES.items():
        for run in sorted((RUNS / "tune" / regime).glob("*/summary.json")):
            vals = [score(run.parent, m) for m in metrics]
            if not all(math.isfinite(v) for v in vals):
                continue
            pairs = zip(metrics, vals, strict=True)
            named = ", ".join(f"{METRIC_NAMES.get(m, m)} {100 * v:.1f}" for m, v in pairs)
            det = [score(run.parent, key) for _, key in DETECTION[:2]]
            lines.append(
                f"| {regime} | {run.parent.name} | {named} | {100 * statistics.fmean(vals):.1f} | "
                f"{_pct(det[0])} | {_pct(det[1])} |"
            )
    return "\n".join(lines)


ORDER = list(REGIMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("phase", choices=["tune", "test", "report", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--regimes", nargs="*", help="a subset of the regimes")
    parser.add_argument("--methods", nargs="*", help="run only these methods (tune / test)")
    args = parser.parse_args(argv)
    if args.regimes:
        for r in set(REGIMES) - set(args.regimes):
            REGIMES.pop(r)

    if args.phase in ("tune", "all"):
        execute(jobs("tune", args.seeds, {}, args.methods), args.workers)
    chosen = choose()
    (RUNS / "chosen.json").parent.mkdir(parents=True, exist_ok=True)
    (RUNS / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n")
    if args.phase in ("test", "all"):
        execute(jobs("test", args.seeds, chosen, args.methods), args.workers)
    # a run of some regimes (--regimes) replaces theirs in the recorded files and keeps the rest
    result = merged(HERE / "results.json", analyse(args.seeds, chosen), set(REGIMES), ORDER)
    chosen = merged(HERE / "chosen.json", chosen, set(REGIMES), ORDER)
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (HERE / "results.md").write_text(text + "\n")
    (HERE / "validation.md").write_text(
        merged_table(HERE / "validation.md", validation_table(), set(REGIMES), ORDER) + "\n"
    )
    (HERE / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
