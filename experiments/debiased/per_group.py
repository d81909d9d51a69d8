"""Rare- vs common-class test accuracy of the imbalance study's trained encoders.

For every finished run of ``run.py imbalance`` this reloads the final checkpoint, extracts frozen
backbone features, fits a balanced 10-shot logistic-regression probe (10 labelled training images
per class, label draws 0..2, features standardised with the labelled subset's statistics, C = 1
fixed: nothing is tuned, least of all on the test split) and reports test accuracy averaged over the
rare classes (``data.subsample_classes``) and over the other (common) classes.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/debiased/per_group.py \
        experiments/debiased/runs/imbalance
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

SHOTS = 10
DRAWS = 3


def group_accuracy(run_dir: Path) -> dict[str, float]:
    import torch

    from debiascl.checkpoint import OLD_MODEL_KEY, load_weights, resolve_resume
    from debiascl.compose import build_data, build_model
    from debiascl.config import load_run_config
    from debiascl.eval.features import encode_split
    from debiascl.eval.linear_probe import few_shot_subset
    from debiascl.eval.run import backbone

    cfg = load_run_config(run_dir)  # a config saved by an older version is migrated
    data = build_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, cfg.data.mode, data.channels, data.info.texts)
    # The run's own config.yaml rebuilt the model, so the fingerprint check is not needed here.
    model_state, _ = load_weights(resolve_resume("latest", run_dir))
    model_state.pop(OLD_MODEL_KEY, None)  # the temperature the model held before the loss
    model.load_state_dict(model_state)
    model.eval()
    with torch.no_grad():
        tr = encode_split(model, backbone, data, "train")
        te = encode_split(model, backbone, data, "test")
    tx, ty = tr.features.numpy(), tr.labels.numpy()
    vx, vy = te.features.numpy(), te.labels.numpy()
    rare = sorted(cfg.data.subsample_classes)
    common = sorted(set(np.unique(vy).tolist()) - set(rare))
    out: dict[str, list[float]] = {"rare": [], "common": [], "all": []}
    for draw in range(DRAWS):
        rows = few_shot_subset(ty, SHOTS, draw)
        scaler = StandardScaler().fit(tx[rows])
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(tx[rows]), ty[rows])
        pred = clf.predict(scaler.transform(vx))
        per_class = {c: float((pred[vy == c] == c).mean()) for c in np.unique(vy).tolist()}
        out["rare"].append(statistics.fmean(per_class[c] for c in rare))
        out["common"].append(statistics.fmean(per_class[c] for c in common))
        out["all"].append(float((pred == vy).mean()))
    return {k: statistics.fmean(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_dir", type=Path)
    args = parser.parse_args(argv)
    table: dict[str, dict[str, list[float]]] = {}
    for run_dir in sorted(args.study_dir.glob("*/seed*")):
        if not (run_dir / "summary.json").exists():
            continue
        res = group_accuracy(run_dir)
        (run_dir / "per_group.json").write_text(json.dumps(res, indent=2) + "\n")
        row = table.setdefault(run_dir.parent.name, {"rare": [], "common": [], "all": []})
        for k, v in res.items():
            row[k].append(v)
        print(run_dir, {k: round(v, 4) for k, v in res.items()}, flush=True)
    lines = [
        f"| config | n | rare classes ({SHOTS}-shot, C=1) | common classes | all |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        cells = [
            f"{100 * statistics.fmean(row[k]):.1f} ± {100 * statistics.stdev(row[k]):.1f}"
            if len(row[k]) > 1
            else f"{100 * row[k][0]:.1f}"
            for k in ("rare", "common", "all")
        ]
        lines.append(f"| {name} | {len(row['rare'])} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (args.study_dir / "per_group.md").write_text(text + "\n")
    (args.study_dir / "per_group.json").write_text(json.dumps(table, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
