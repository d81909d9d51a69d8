"""Aggregate run directories over seeds: ``debiascl report RUN_DIR ...``.

Runs are grouped by their resolved config in today's spelling (old keys migrated, defaults filled
in: :func:`normalized_config`) with the seed, name and output location removed, so the seeds of
one setting form one row; every numeric result in ``summary.json`` is reported as
mean ± sample standard deviation over the group, with the seeds listed. Output is Markdown (for
docs) and JSON (for scripts).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from debiascl.errors import DataError
from debiascl.eval.report import flatten_results

DEFAULT_COLUMNS = {
    "linear_probe/100%": "LP 100%",
    "linear_probe/10%": "LP 10%",
    "linear_probe/1%": "LP 1%",
    "knn/accuracy": "kNN",
    "zero_shot/accuracy": "zero-shot",
    "fn_detection/precision": "FN prec",
    "fn_detection/recall": "FN rec",
    "fn_detection/removed_fraction": "removed",
}

_IGNORED = {"seed", "name", "output_dir"}


def metric_at(tree: dict[str, Any], path: str) -> float:
    """The number at ``a/b/c`` in a nested results dict, or NaN when absent or not a number."""
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return math.nan
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN, NaN when there are none)."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _setting_key(config: dict[str, Any]) -> str:
    kept = {k: v for k, v in config.items() if k not in _IGNORED}
    kept.get("checkpoint", {}).pop("resume", None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]


def normalized_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved run config in today's spelling with every default filled in
    (:func:`debiascl.config.migrate.saved_run_config`), so runs of one setting saved before and
    after a key moved or a setting was added group together; the saved mapping as it is when it
    no longer validates (a run of a removed setting still reports, in a group of its own)."""
    from debiascl.config.loader import resolved_config
    from debiascl.config.migrate import saved_run_config
    from debiascl.errors import ConfigError

    try:
        return resolved_config(saved_run_config(config))
    except ConfigError:
        return config


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config in today's spelling, see :func:`normalized_config`; summary) of one run
    directory."""
    cfg_path, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    if not cfg_path.is_file() or not summary_path.is_file():
        raise DataError(
            f"{run_dir} is not a finished run (needs config.yaml and summary.json); "
            "pass directories written by `debiascl train`"
        )
    try:
        config, summary = yaml.safe_load(cfg_path.read_text()), json.loads(summary_path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise DataError(f"{run_dir}: unreadable config.yaml or summary.json ({err})") from None
    if not isinstance(config, dict):
        raise DataError(f"{cfg_path}: not a mapping; pass directories written by `debiascl train`")
    return normalized_config(config), summary


def aggregate_runs(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One entry per setting: ``{"label", "seeds", "runs", "metrics": {path: {mean, std, n}}}``."""
    groups: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for run_dir in run_dirs:
        config, summary = load_run(Path(run_dir))
        key = _setting_key(config)
        configs.setdefault(key, config)
        group = groups.setdefault(
            key,
            {"label": config.get("name", key), "key": key, "seeds": [], "runs": [], "values": {}},
        )
        group["seeds"].append(config.get("seed"))
        group["runs"].append(str(run_dir))
        flat = flatten_results({k: v for k, v in summary.items() if k != "references"})
        for path, (value, _) in flat.items():
            if math.isfinite(value):
                group["values"].setdefault(path, []).append(value)
    out = []
    for group in groups.values():
        metrics = {
            path: {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
            for path, vals in group.pop("values").items()
        }
        out.append({**group, "metrics": metrics})
    _distinguish_labels(out, configs)
    return out


def flat_config(
    tree: dict[str, Any], prefix: str = "", empty_dict_leaves: bool = False
) -> dict[str, Any]:
    """``{"section.key": value}`` of a nested config. An empty mapping is dropped, or kept as the
    leaf ``{}`` with ``empty_dict_leaves``."""
    out: dict[str, Any] = {}
    for key, val in tree.items():
        name = f"{prefix}{key}"
        if isinstance(val, dict) and (val or not empty_dict_leaves):
            out.update(flat_config(val, name + ".", empty_dict_leaves))
        else:
            out[name] = val
    return out


def _flat(tree: dict[str, Any]) -> dict[str, str]:
    """:func:`flat_config` with empty mappings as leaves and every non-string leaf as its JSON
    text (sorted keys), for labels."""
    return {
        name: val if isinstance(val, str) else json.dumps(val, sort_keys=True)
        for name, val in flat_config(tree, empty_dict_leaves=True).items()
    }


def _other_method(key: str, flats: list[dict[str, str]]) -> bool:
    """Whether ``key`` is in the settings block of a loss / detector (``loss.dcl.eta``) that not
    every compared run selects: that difference is already told by ``<section>.name``."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] not in ("loss", "negatives"):
        return False
    return {f.get(f"{parts[0]}.name") for f in flats} != {parts[1]}


def _distinguish_labels(groups: list[dict[str, Any]], configs: dict[str, dict]) -> None:
    """Settings that share a name are labelled with the config keys in which they differ."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        by_label.setdefault(group["label"], []).append(group)
    for same in by_label.values():
        if len(same) < 2:
            continue
        flats = [_flat(configs[g["key"]]) for g in same]
        keys = sorted({k for f in flats for k in f} - {"seed", "name", "output_dir"})
        keys = [k for k in keys if len({f.get(k, "(unset)") for f in flats}) > 1]
        keys = [k for k in keys if k != "checkpoint.resume" and not _other_method(k, flats)]
        for group, flat in zip(same, flats, strict=True):
            diff = ", ".join(f"{k}={flat.get(k, '(unset)')}" for k in keys)
            group["label"] = f"{group['label']} ({diff or group['key']})"


def markdown_table(groups: list[dict[str, Any]], columns: dict[str, str] | None = None) -> str:
    """Rows = settings, cells = mean ± std in percent; last column: the number of runs and their
    seeds, ``3 (0,1,2)``."""
    columns = columns or {
        p: h for p, h in DEFAULT_COLUMNS.items() if any(p in g["metrics"] for g in groups)
    }
    lines = [
        "| setting | " + " | ".join(columns.values()) + " | seeds |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for g in groups:
        cells = []
        for path in columns:
            m = g["metrics"].get(path)
            cells.append("-" if m is None else f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}")
        seeds = f"{len(g['runs'])} ({','.join(str(s) for s in g['seeds'])})"
        lines.append(f"| {g['label']} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines)
