"""The flat ``fairness.*`` keys before fairness terms (issue 11) and their new spelling.

Old YAML files and overrides (``fairness.weight=0 fairness.mean_gap_weight=10
fairness.mean_gap_whiten=true``) fail with one line naming the replacement
(``fairness.terms: [{name: fisher_gap, weight: 10}]``). Saved run configs of runs that trained
without fairness carry every old key at its default; config.migrate drops those silently. In
user input an old key is an error even at its default value.
"""

from __future__ import annotations

from typing import Any

from debiascl.errors import ConfigError

#: old adversary key -> (its default, the ``adversary`` term's setting)
_ADVERSARY = {
    "weight": (1.0, "weight"),
    "method": ("reversal", "method"),
    "objective": ("confusion", "objective"),
    "hidden_dim": (128, "hidden_dim"),
    "disc_layers": (2, "layers"),
    "disc_standardize": (False, "standardize"),
    "lr": (1e-3, "lr"),
    "disc_steps": (1, "disc_steps"),
    "refit_every_epochs": (0, "refit_every_epochs"),
    "refit_steps": (200, "refit_steps"),
}
_SCHEDULE = {"warmup_epochs": 0, "schedule": "constant", "ramp_epochs": 0}
_GAP = {
    "mean_gap_weight": 0.0,
    "mean_gap_whiten": False,
    "mean_gap_conditional": False,
    "mean_gap_momentum": 0.0,
    "mean_gap_shrinkage": 0.1,
}
#: old audit key -> (its default, the key under eval.fairness_audit)
_AUDIT = {
    "audit_attributes": (None, "attributes"),
    "intersections": ([], "intersections"),
    "audit_val_fraction": (0.2, "val_fraction"),
    "threshold_rule": ("youden", "threshold_rule"),
    "bootstrap": (200, "bootstrap"),
    "ece_bins": (10, "ece_bins"),
    "few_shot_k": ([1, 4, 16], "few_shot_k"),
    "few_shot_seeds": (3, "few_shot_seeds"),
    "leakage_probe": (True, "leakage_probe"),
}
_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "adversary_view": "augmented",
    **{k: d for k, (d, _) in _ADVERSARY.items()},
    **_SCHEDULE,
    **_GAP,
    **{k: d for k, (d, _) in _AUDIT.items()},
}
OLD_FAIRNESS_KEYS = frozenset(_DEFAULTS)


def _flow(entry: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in entry.items()) + "}"


def new_settings(old: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None, dict]:
    """What replaces an old ``fairness`` section's flat keys.

    Returns:
        (``fairness.terms`` entries, or None when fairness was off; ``fairness.view`` when it
        was not the default, else None; ``eval.fairness_audit`` settings that were changed).
    """
    get = old.get
    terms: list[dict[str, Any]] = []
    adv_weight = float(get("weight", 1.0))
    sched = {k: get(k, d) for k, d in _SCHEDULE.items() if get(k, d) != d}
    if get("enabled", False) and adv_weight > 0:
        entry: dict[str, Any] = {"name": "adversary", "weight": adv_weight}
        for key, (default, new) in _ADVERSARY.items():
            if key != "weight" and get(key, default) != default:
                entry[new] = get(key)
        terms.append({**entry, **sched})
    if get("enabled", False) and float(get("mean_gap_weight", 0.0)) > 0:
        name = "mean_gap"
        if get("mean_gap_conditional", False):
            name = "conditional_gap"
        elif get("mean_gap_whiten", False):
            name = "fisher_gap"
        entry = {"name": name, "weight": float(get("mean_gap_weight"))}
        if name != "mean_gap" and float(get("mean_gap_momentum", 0.0)) > 0:
            entry["momentum"] = get("mean_gap_momentum")
        if name == "fisher_gap" and float(get("mean_gap_shrinkage", 0.1)) != 0.1:
            entry["shrinkage"] = get("mean_gap_shrinkage")
        if adv_weight > 0:  # the penalty followed the adversary's schedule
            entry.update(sched)
        terms.append(entry)
    view = get("adversary_view", "augmented")
    audit = {
        new: get(key) for key, (default, new) in _AUDIT.items() if get(key, default) != default
    }
    return (
        (terms if get("enabled", False) else None),
        (view if view != "augmented" else None),
        audit,
    )


def new_spelling(old: dict[str, Any]) -> list[str]:
    """The replacement of an old ``fairness`` section's flat keys, as ``key: value`` phrases."""
    terms, view, audit = new_settings(old)
    out: list[str] = []
    if terms is not None:
        out.append("fairness.terms: [" + ", ".join(_flow(t) for t in terms) + "]")
    if view is not None:
        out.append(f"fairness.view: {view}")
    out.extend(f"eval.fairness_audit.{key}: {value}" for key, value in audit.items())
    return out


def reject_old_fairness_keys(raw: dict[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` for old flat ``fairness`` keys (see module doc).

    Used for user input (a YAML file, overrides), where an old key is an error whatever its
    value; a saved run's config is migrated first (:mod:`debiascl.config.migrate`), which drops
    old keys left at their defaults.
    """
    node = raw.get("fairness")
    if not isinstance(node, dict):
        return
    old = {k: node[k] for k in OLD_FAIRNESS_KEYS if k in node}
    if not old:
        return
    changed = [k for k in sorted(old) if old[k] != _DEFAULTS[k]] or sorted(old)
    keys = ", ".join(f"fairness.{k}" for k in changed)
    replacement = new_spelling(old) or ["nothing (fairness was off); delete them"]
    raise ConfigError(f"{keys} moved: use {'; '.join(replacement)}")
