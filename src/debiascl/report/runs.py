"""Read everything a run directory holds for the HTML report, and group runs over seeds.

A run directory written by ``debiascl train`` has ``config.yaml``, ``summary.json``,
``metrics.jsonl`` (one record per epoch) and, depending on the method, ``eta_summary.json``
(SSD), ``removed_pairs.csv`` (a detector removed negatives) and ``test_embeddings.npz``
(evaluation ran). Missing optional files are simply absent here; the report notes them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from debiascl.errors import DataError
from debiascl.eval.embedding_sample import FILE_NAME as EMBEDDINGS_FILE
from debiascl.eval.embedding_sample import load_embedding_sample
from debiascl.negatives.removed_pairs import FILE_NAME as PAIRS_FILE
from debiascl.negatives.removed_pairs import read_removed_pairs
from debiascl.report.aggregate import _setting_key, flat_config, load_run


@dataclass
class RunData:
    """One run directory's files (see module docstring)."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eta_summary: dict[str, Any] | None = None
    removed_pairs: list[dict[str, Any]] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def label(self) -> str:
        return f"{self.name} (seed {self.seed})"

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of ``key`` in ``metrics.jsonl``, skipping missing and null values."""
        xs, ys = [], []
        for rec in self.metrics:
            val = rec.get(key)
            if isinstance(val, int | float) and not isinstance(val, bool) and math.isfinite(val):
                xs.append(int(rec.get("epoch", len(xs) + 1)))
                ys.append(float(val))
        return xs, ys

    def metric_keys(self) -> set[str]:
        return {k for rec in self.metrics for k in rec}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Epoch records of a ``metrics.jsonl``; torn or non-object lines are skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def load_run_data(run_dir: Path) -> RunData:
    """All report inputs of one finished run (raises DataError for an unfinished one)."""
    run_dir = Path(run_dir)
    config, summary = load_run(run_dir)
    eta = None
    eta_path = run_dir / "eta_summary.json"
    if eta_path.is_file():
        try:
            eta = json.loads(eta_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{eta_path}: unreadable JSON ({err})") from None
    try:
        pairs = read_removed_pairs(run_dir / PAIRS_FILE)
    except (KeyError, ValueError) as err:
        raise DataError(f"{run_dir / PAIRS_FILE}: malformed ({err}); delete it or rerun") from None
    return RunData(
        path=run_dir,
        config=config,
        summary=summary,
        metrics=read_metrics(run_dir / "metrics.jsonl"),
        eta_summary=eta,
        removed_pairs=pairs,
        embeddings=load_embedding_sample(run_dir / EMBEDDINGS_FILE),
    )


@dataclass
class RunGroup:
    """Runs whose configs differ only in seed / name / output location."""

    key: str
    runs: list[RunData]
    colour: str = "C0"  # the setting's colour in every plot

    @property
    def label(self) -> str:
        return self.runs[0].name

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]


def group_runs(runs: Sequence[RunData]) -> list[RunGroup]:
    """Group runs by setting, in the order each setting first appears; labels made unique."""
    groups: dict[str, RunGroup] = {}
    for run in runs:
        key = _setting_key(json.loads(json.dumps(run.config)))
        groups.setdefault(key, RunGroup(key, [], f"C{len(groups) % 10}")).runs.append(run)
    return list(groups.values())


def unique_labels(groups: Sequence[RunGroup]) -> list[str]:
    """Group labels, suffixed with the setting hash where two settings share a name."""
    names = [g.label for g in groups]
    return [
        f"{n} [{g.key[:6]}]" if names.count(n) > 1 else n
        for n, g in zip(names, groups, strict=True)
    ]


def value_at(tree: Any, path: str) -> float:
    """Number at ``a/b/c`` (NaN when absent, null or not a number)."""
    for part in path.split("/"):
        if not isinstance(tree, dict) or part not in tree:
            return math.nan
        tree = tree[part]
    if isinstance(tree, dict) and "mean" in tree:  # probe results {mean, std, per_seed}
        tree = tree["mean"]
    ok = isinstance(tree, int | float) and not isinstance(tree, bool)
    return float(tree) if ok else math.nan


def seed_stats(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std (0 for one value), n) of the finite values; (NaN, NaN, 0) if none."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def config_differences(groups: Sequence[RunGroup]) -> dict[str, list[Any]]:
    """Config keys whose values differ between settings (seed, name, output_dir excluded):
    ``{key: [value of setting 0, value of setting 1, ...]}``."""
    flats = [flat_config(g.runs[0].config) for g in groups]
    keys = sorted({k for f in flats for k in f})
    ignored = {"seed", "name", "output_dir", "checkpoint.resume"}
    out = {}
    for key in keys:
        if key in ignored:
            continue
        vals = [f.get(key, "(unset)") for f in flats]
        if any(json.dumps(v, sort_keys=True) != json.dumps(vals[0], sort_keys=True) for v in vals):
            out[key] = vals
    return out
