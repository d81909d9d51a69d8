"""Run the debiased-loss experiments of issue 5 sequentially and tabulate them.

Studies (configs in ``src/debiascl/configs``):
    imbalance: SSD's controlled-imbalance study on Fashion-MNIST (``fmnist_imbalance_*``).
    captions:  image-text with skewed caption frequency (``fmnist_ssd_*``).

Each run trains through :class:`debiascl.train.trainer.Trainer` (as ``debiascl train`` does),
writes the loss's artifacts (``eta_summary.json``) into its run directory, and the script writes
``<out>/<study>/results.json`` and ``results.md`` (mean ± sample std over seeds). Results are read
from the test split only after training; nothing is selected on it.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/debiased/run.py imbalance --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python experiments/debiased/run.py captions --seeds 0 1 2
    .venv/bin/python experiments/debiased/run.py captions --aggregate-only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from debiascl.report import mean_std, metric_at

STUDIES: dict[str, list[str]] = {
    "imbalance": [
        "fmnist_imbalance_infonce",
        "fmnist_imbalance_dcl_rare",
        "fmnist_imbalance_dcl_common",
        "fmnist_imbalance_dcl_true",
    ],
    "captions": [
        "fmnist_ssd_none",
        "fmnist_ssd_constant",
        "fmnist_ssd_corpus",
        "fmnist_ssd_corpus_scaled",
        "fmnist_ssd_corpus5",
    ],
}

# (label, path in summary.json) of the reported metrics.
METRICS: dict[str, list[tuple[str, str]]] = {
    "imbalance": [
        ("LP 10% labels", "linear_probe/10%/mean"),
        ("10-shot probe", "few_shot/10-shot/mean"),
        ("kNN (k=50)", "knn/accuracy"),
    ],
    "captions": [
        ("zero-shot acc", "zero_shot/accuracy"),
        ("zero-shot AUC", "zero_shot/auc_macro"),
        ("LP 10% labels", "linear_probe/10%/mean"),
    ],
}


def _epochs(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().strip().splitlines()
    return [json.loads(line) for line in lines]


def run_one(config: str, seed: int, run_dir: Path) -> None:
    from debiascl.config import load_config
    from debiascl.train.trainer import Trainer

    cfg = load_config(config, [f"seed={seed}", f"output_dir={run_dir.parent}"])
    trainer = Trainer(cfg, run_dir=run_dir)
    trainer.fit(evaluate=True)  # also writes eta_summary.json into run_dir


def aggregate(study: str, out: Path, seeds: list[int]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for config in STUDIES[study]:
        per_seed: list[dict[str, float]] = []
        for seed in seeds:
            run_dir = out / config / f"seed{seed}"
            if not (run_dir / "summary.json").exists():
                continue
            summary = json.loads((run_dir / "summary.json").read_text())
            epochs = _epochs(run_dir)
            last = epochs[-1]
            rec = {label: metric_at(summary, path) for label, path in METRICS[study]}
            diag = summary.get("fn_detection", {})
            first = epochs[0].get("negatives/clamped_fraction")
            rec["clamped fraction (epoch 1)"] = math.nan if first is None else float(first)
            rec["clamped fraction (last epoch)"] = float(diag.get("clamped_fraction", math.nan))
            rec["eta mean"] = float(diag.get("eta_mean", math.nan))
            rec["train seconds"] = float(summary.get("train_seconds", math.nan))
            rec["final loss"] = float(last.get("loss", math.nan))
            rec["seed"] = seed
            per_seed.append(rec)
        if not per_seed:
            continue
        keys = [k for k in per_seed[0] if k != "seed"]
        rows[config] = {
            "seeds": [r["seed"] for r in per_seed],
            "per_seed": per_seed,
            "mean_std": {k: mean_std([r[k] for r in per_seed]) for k in keys},
        }
    result = {"study": study, "seeds": seeds, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(study, rows) + "\n")
    return result


_RAW_KEYS = (
    "clamped fraction (epoch 1)",
    "clamped fraction (last epoch)",
    "eta mean",
    "train seconds",
    "final loss",
)


def _markdown(study: str, rows: dict[str, Any]) -> str:
    if not rows:
        return "(no finished runs)"
    keys = list(next(iter(rows.values()))["mean_std"])
    lines = ["| config | n | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for config, row in rows.items():
        cells = []
        for k in keys:
            m, s = row["mean_std"][k]
            raw = k in _RAW_KEYS
            cells.append(f"{m:.3g} ± {s:.2g}" if raw else f"{100 * m:.1f} ± {100 * s:.1f}")
        lines.append(f"| {config} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="experiments/debiased/runs")
    parser.add_argument("--only", nargs="*", help="subset of the study's configs")
    parser.add_argument("--aggregate-only", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out) / args.study
    if not args.aggregate_only:
        for seed in args.seeds:  # seed-major: a partial study still has every method
            for config in STUDIES[args.study]:
                if args.only and config not in args.only:
                    continue
                run_dir = out / config / f"seed{seed}"
                if (run_dir / "summary.json").exists():
                    print(f"skip {config} seed {seed} (done)", flush=True)
                    continue
                t0 = time.perf_counter()
                run_one(config, seed, run_dir)
                print(f"done {config} seed {seed} in {time.perf_counter() - t0:.0f} s", flush=True)
    result = aggregate(args.study, out, args.seeds)
    print(_markdown(args.study, result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
