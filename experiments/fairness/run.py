"""Plain CLIP vs AdFair-CLIP on the SYNTHETIC-attribute Fashion-MNIST benchmark, and a weight sweep.

Trains every (method, seed) sequentially through the CLI (``debiascl train``), one thread each,
then aggregates the fairness audit of every run (``summary.json["fairness"]``) into mean ± std
over seeds and writes ``results.md`` / ``results.json`` next to this script (or ``--results``).
Runs that already have a ``summary.json`` are not retrained (the script can be resumed).

Everything is evaluated on the fixed test split; thresholds come from a validation split carved
from the training data (``eval.fairness_audit.val_fraction``); nothing is selected on the test
split.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/fairness/run.py \
        --seeds 0 1 2 --weights 0.3 1 3 10 --runs runs/fairness_experiment

``--variant LABEL SLUG 'KEY=VALUE;...'`` adds a named setting of ``synth_attr_adfair`` (runs
``<SLUG>_s<seed>``; overrides separated by ``;``, since a ``fairness.terms=[{...}, {...}]`` list
holds commas); with ``--sweep-weight-of SLUG`` the ``--weights`` sweep puts each weight W for the
``{w}`` placeholder of that variant's overrides (runs ``<SLUG>_w<W>_s<seed>``), e.g.
``'fairness.terms=[{name: fisher_gap, weight: {w}}]'``; without it the sweep is over the
adversary's weight, ``fairness.terms=[{name: adversary, weight: W}]``.
``--no-plain`` leaves out the plain model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
#: (column header, path in the summary, format as percent)
COLUMNS: list[tuple[str, str, bool]] = [
    ("leak acc (emb)", "fairness/leakage/embedding/synthetic_mark/accuracy", True),
    ("leak AUC (emb)", "fairness/leakage/embedding/synthetic_mark/auc", False),
    ("leak AUC (backbone)", "fairness/leakage/backbone/synthetic_mark/auc", False),
    ("ZS acc", "fairness/zero_shot/accuracy", True),
    ("ZS AUC", "fairness/zero_shot/fairness/attributes/synthetic_mark/auc", False),
    (
        "ZS worst-group AUC",
        "fairness/zero_shot/fairness/attributes/synthetic_mark/worst_group_auc",
        False,
    ),
    ("ZS DPD", "fairness/zero_shot/fairness/attributes/synthetic_mark/dpd", False),
    ("ZS EOD", "fairness/zero_shot/fairness/attributes/synthetic_mark/eod", False),
    ("16-shot DPD", "fairness/few_shot/16-shot/synthetic_mark/dpd/mean", False),
    ("16-shot EOD", "fairness/few_shot/16-shot/synthetic_mark/eod/mean", False),
    ("LP 100%", "linear_probe/100%", True),
]


def _get(tree: Any, path: str) -> float | None:
    for part in path.split("/"):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    if isinstance(tree, dict) and "accuracy" in tree and not isinstance(tree["accuracy"], dict):
        tree = tree["accuracy"]  # linear_probe/100% -> its accuracy
    if isinstance(tree, dict) and "mean" in tree:
        tree = tree["mean"]
    return None if tree is None else float(tree)


def train(config: str, name: str, seed: int, runs: Path, extra: list[str]) -> dict[str, Any]:
    run_dir = runs / name
    summary = run_dir / "summary.json"
    if not summary.is_file():
        cmd = [
            sys.executable, "-m", "debiascl.cli", "train", config,
            f"name={name}", f"output_dir={runs}", f"seed={seed}", "train.threads=1", *extra,
        ]  # fmt: skip
        print("$", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            subprocess.run(cmd, check=True, env=env, stdout=fh, stderr=subprocess.STDOUT)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(summary.read_text())


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for header, path, _ in COLUMNS:
        vals = [v for s in summaries if (v := _get(s, path)) is not None]
        arr = np.asarray(vals, dtype=np.float64)
        out[header] = {
            "mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
            "n": int(arr.size),
        }
    return out


def markdown(rows: dict[str, dict[str, dict[str, float | None]]]) -> str:
    pct = {h: p for h, _, p in COLUMNS}
    head = "| method | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    lines = [head, rule]
    for name, agg in rows.items():
        cells = []
        for h, _, _ in COLUMNS:
            m, s = agg[h]["mean"], agg[h]["std"]
            if m is None:
                cells.append("-")
                continue
            f = 100.0 if pct[h] else 1.0
            d = 1 if pct[h] else 3
            # one seed: no spread to show
            cells.append(f"{m * f:.{d}f}" if s is None else f"{m * f:.{d}f} ± {s * f:.{d}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--weights", type=float, nargs="*", default=[0.3, 1.0, 3.0, 10.0])
    p.add_argument("--runs", type=Path, default=Path("runs/fairness_experiment"))
    p.add_argument("--results", type=Path, default=HERE)
    p.add_argument(
        "--variant",
        nargs=3,
        action="append",
        default=[],
        metavar=("LABEL", "SLUG", "OVERRIDES"),
        help="a named synth_attr_adfair setting: label, run-name slug, ';'-separated overrides",
    )
    p.add_argument("--sweep-weight-of", default=None, help="slug of the variant to sweep")
    p.add_argument("--no-plain", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    methods: dict[str, tuple[str, list[str], str]] = {}
    if not args.no_plain:
        methods["plain CLIP"] = ("synth_attr_clip", [], "plain_CLIP")
    variants = {slug: (label, [o for o in ov.split(";") if o]) for label, slug, ov in args.variant}
    for slug, (label, ov) in variants.items():
        if slug != args.sweep_weight_of:
            methods[label] = ("synth_attr_adfair", ov, slug)
    for w in args.weights:
        if args.sweep_weight_of is None:
            methods[f"AdFair weight {w:g}"] = (
                "synth_attr_adfair", [f"fairness.terms=[{{name: adversary, weight: {w}}}]"],
                f"adfair_w{w:g}",
            )  # fmt: skip
        else:
            label, ov = variants[args.sweep_weight_of]
            if not any("{w}" in o for o in ov):
                p.error(f"--sweep-weight-of {args.sweep_weight_of}: its overrides need a {{w}}")
            methods[f"{label}, weight {w:g}"] = (
                "synth_attr_adfair",
                [o.replace("{w}", f"{w:g}") for o in ov],
                f"{args.sweep_weight_of}_w{w:g}",
            )
    rows: dict[str, dict[str, dict[str, float | None]]] = {}
    per_run: dict[str, list[dict[str, Any]]] = {}
    for label, (config, extra, slug) in methods.items():
        summaries = []
        for seed in args.seeds:
            summaries.append(
                train(config, f"{slug}_s{seed}", seed, args.runs, [*extra, *args.overrides])
            )
        rows[label] = aggregate(summaries)
        per_run[label] = [
            {"seed": s["seed"], **{h: _get(s, path) for h, path, _ in COLUMNS}} for s in summaries
        ]
    table = markdown(rows)
    chance = [
        _get(s, "fairness/leakage/embedding/synthetic_mark/chance_accuracy")
        for s in [json.loads((args.runs / "plain_CLIP_s0" / "summary.json").read_text())]
        if (args.runs / "plain_CLIP_s0" / "summary.json").is_file()
    ]
    note = (
        f"SYNTHETIC attribute (border mark on Fashion-MNIST). Seeds {args.seeds}; mean ± std "
        f"(ddof=1) over seeds. Leakage chance accuracy {chance[0] * 100:.1f}%, chance AUC 0.5."
        if chance and chance[0] is not None
        else f"SYNTHETIC attribute. Seeds {args.seeds}."
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.md").write_text(f"{note}\n\n{table}\n")
    (args.results / "results.json").write_text(
        json.dumps(
            {"seeds": args.seeds, "weights": args.weights, "overrides": args.overrides,
             "aggregate": rows, "per_run": per_run},
            indent=2,
        ) + "\n"
    )  # fmt: skip
    print(note)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
