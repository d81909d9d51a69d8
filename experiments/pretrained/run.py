"""Pretrained-init vs scratch fine-tuning (issue 12): one command, seeds x {pretrained, scratch}.

Both arms run the shipped config ``fmnist_clip_pretrained`` (Fashion-MNIST with template captions,
EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower with its last layer trained, SogCLR +
GloFND). The only difference is ``model.pretrained``: ``true`` loads the ImageNet weights of the
image tower, ``false`` starts it from random weights. The text tower is the pretrained MiniLM in
both arms (debiascl has no random-init MiniLM). Same epochs, seeds, training subset (seeded by the
run seed) and test subset (the same 2000 images for every run).

Each run is ``debiascl train`` in a subprocess (one torch thread, runs one after another) writing
``<runs>/<arm>/seed<k>``; its ``summary.json``, ``config.yaml`` and ``metrics.jsonl`` are copied to
``experiments/pretrained/results/<arm>/seed<k>`` (checkpoints stay in the ignored run directory).
The script then writes ``results/results.json`` and ``results/results.md``: mean ± sample std over
seeds per arm and the paired difference pretrained - scratch per seed with its mean and a 95%
Student-t interval. The test split is only scored after training; no setting was chosen on it.

Usage::

    .venv/bin/python experiments/pretrained/run.py                 # seeds 0 1 2, both arms
    .venv/bin/python experiments/pretrained/run.py --aggregate-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scipy import stats

from debiascl.report import mean_std, metric_at

CONFIG = "fmnist_clip_pretrained"
ARMS: list[tuple[str, list[str]]] = [
    ("pretrained", ["model.pretrained=true"]),
    ("scratch", ["model.pretrained=false"]),
]
# (column, path in summary.json, shown in percent)
METRICS: list[tuple[str, str, bool]] = [
    ("zero-shot", "zero_shot/accuracy", True),
    ("zero-shot AUC", "zero_shot/auc_macro", True),
    ("LP 100%", "linear_probe/100%/mean", True),
    ("LP 10%", "linear_probe/10%/mean", True),
    ("kNN", "knn/accuracy", True),
    ("train s", "train_seconds", False),
    ("wall s", "wall_seconds", False),
]
PAIRED = ["zero-shot", "zero-shot AUC", "LP 100%", "LP 10%", "kNN"]
KEPT = ("summary.json", "config.yaml", "metrics.jsonl")
HERE = Path(__file__).resolve().parent


def run_one(overrides: list[str], seed: int, run_dir: Path, threads: int) -> float:
    """Train and evaluate one run with ``debiascl train``; returns wall seconds."""
    cmd = [
        sys.executable,
        "-m",
        "debiascl.cli",
        "train",
        CONFIG,
        *overrides,
        f"seed={seed}",
        f"train.threads={threads}",
        "checkpoint.overwrite=true",
        "--run-dir",
        str(run_dir),
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def keep(run_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the Student-t confidence interval of the mean (NaN bounds below 2 values)."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, math.nan, math.nan
    quantile = stats.t.ppf(0.5 + level / 2, len(vals) - 1)
    half = quantile * statistics.stdev(vals) / math.sqrt(len(vals))
    return mean, mean - half, mean + half


def aggregate(results: Path, seeds: list[int]) -> dict[str, Any]:
    """Collect the kept summaries into ``results.json`` and ``results.md`` under ``results``."""
    arms: dict[str, Any] = {}
    for arm, _ in ARMS:
        per_seed = []
        for seed in seeds:
            path = results / arm / f"seed{seed}" / "summary.json"
            if path.exists():
                summary = json.loads(path.read_text())
                per_seed.append({"seed": seed, **{n: metric_at(summary, k) for n, k, _ in METRICS}})
        arms[arm] = {
            "seeds": [r["seed"] for r in per_seed],
            "per_seed": per_seed,
            "mean_std": {n: mean_std([r[n] for r in per_seed]) for n, _, _ in METRICS},
        }
    pre = {r["seed"]: r for r in arms["pretrained"]["per_seed"]}
    scr = {r["seed"]: r for r in arms["scratch"]["per_seed"]}
    both = [s for s in seeds if s in pre and s in scr]
    paired: dict[str, Any] = {}
    for name in PAIRED:
        diffs = [pre[s][name] - scr[s][name] for s in both]
        mean, lo, hi = t_interval(diffs)
        paired[name] = {"seeds": both, "per_seed": diffs, "mean": mean, "ci95": [lo, hi]}
    result = {"config": CONFIG, "seeds": seeds, "arms": arms}
    result["paired_pretrained_minus_scratch"] = paired
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / "results.md").write_text(markdown(result) + "\n")
    return result


def _pct(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{100 * v:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """Arms (mean ± sample std over seeds) and paired differences, fractions in percent."""
    lines = [
        "| init | seeds | " + " | ".join(n for n, _, _ in METRICS) + " |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for arm, row in result["arms"].items():
        cells = []
        for name, _, pct in METRICS:
            m, s = row["mean_std"][name]
            if not math.isfinite(m):
                cells.append("-")
            elif pct:
                cells.append(f"{100 * m:.1f} ± {100 * s:.1f}")
            else:
                cells.append(f"{m:.0f} ± {s:.0f}")
        lines.append(f"| {arm} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired difference pretrained − scratch (percentage points; per seed, mean, 95% t "
        "interval):",
        "",
        "| metric | per seed | mean | 95% CI |",
        "|---|---|---|---|",
    ]
    for name, d in result["paired_pretrained_minus_scratch"].items():
        per = ", ".join(f"{s}: {_pct(v)}" for s, v in zip(d["seeds"], d["per_seed"], strict=True))
        lo, hi = d["ci95"]
        lines.append(f"| {name} | {per or '-'} | {_pct(d['mean'])} | [{_pct(lo)}, {_pct(hi)}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default=str(HERE / "runs"), help="run directories (ignored)")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--aggregate-only", action="store_true")
    args = parser.parse_args(argv)
    runs, results = Path(args.runs), Path(args.results)
    if not args.aggregate_only:
        for seed in args.seeds:  # seed-major: a partial study still pairs both arms
            for arm, overrides in ARMS:
                dest = results / arm / f"seed{seed}"
                if (dest / "summary.json").exists():
                    print(f"skip {arm} seed {seed} (done)", flush=True)
                    continue
                seconds = run_one(overrides, seed, runs / arm / f"seed{seed}", args.threads)
                keep(runs / arm / f"seed{seed}", dest)
                print(f"done {arm} seed {seed} in {seconds:.0f} s", flush=True)
                aggregate(results, args.seeds)
    result = aggregate(results, args.seeds)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
