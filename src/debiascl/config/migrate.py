"""Saved run configs (``<run_dir>/config.yaml``) from before a key moved, read in today's spelling.

A user's YAML file with a moved key stops with a one-line error naming the new key
(:mod:`debiascl.config.loader`): the user should fix the file. A *saved* config records what a
finished run trained with, so :func:`load_run_config` rewrites the moved keys to their new
spelling, with the same meaning, and logs one note per change:

* ``model.logit_scale_init / learn_logit_scale / max_logit_scale`` (the temperature moved from
  the model to the loss). Image-text InfoNCE trained with the model's scale, so it becomes
  ``loss.temperature = 1 / logit_scale_init``, ``loss.learn_temperature`` and
  ``loss.max_logit_scale``; every other run trained at ``loss.temperature`` (fixed) and the
  model keys, unused, are dropped (evaluation now uses that trained scale).
* the flat method settings of ``loss`` and ``negatives`` (``loss.gamma``, ``negatives.lr``,
  ...): the selected method's subsection (``loss.sogclr.gamma``, ``negatives.glofnd.lr``); keys
  the selected method never read are dropped (with a note when they were not at their default).
* the flat ``fairness.*`` keys (``weight``, ``mean_gap_weight``, ``mean_gap_whiten``, ...):
  ``fairness.terms`` entries, ``fairness.view``, and the audit settings under
  ``eval.fairness_audit`` (see :mod:`debiascl.config.fairness_moves`).

A key whose meaning cannot be carried over (the old and the new spelling both present and
disagreeing) is a one-line :class:`~debiascl.errors.ConfigError` naming the change.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from debiascl.config.fairness_moves import _DEFAULTS, OLD_FAIRNESS_KEYS, new_settings
from debiascl.config.loader import apply_overrides, config_from_dict
from debiascl.config.schema import LossConfig, NegativesConfig, RunConfig
from debiascl.errors import ConfigError

logger = logging.getLogger("debiascl.config")

#: The model's logit-scale keys before the loss owned the temperature, with their old defaults.
OLD_MODEL_SCALE = {
    "logit_scale_init": 1 / 0.07,
    "learn_logit_scale": True,
    "max_logit_scale": 100.0,
}


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    node = raw.setdefault(name, {})
    if not isinstance(node, dict):
        raise ConfigError(f"the saved config's {name!r} is not a section")
    return node


def _set(node: dict[str, Any], key: str, value: Any, where: str, change: str) -> None:
    if key in node and node[key] != value:
        raise ConfigError(
            f"the saved config has both the old and the new spelling of {where} ({node[key]!r} "
            f"vs {value!r}) and cannot be migrated: {change}; edit the run's config.yaml"
        )
    node[key] = value


def _migrate_logit_scale(raw: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    model = raw.get("model")
    if not isinstance(model, dict) or not any(k in model for k in OLD_MODEL_SCALE):
        return {}
    old = {k: model.pop(k, d) for k, d in OLD_MODEL_SCALE.items()}
    legacy = {k: v for k, v in old.items() if v != OLD_MODEL_SCALE[k]}
    data, loss = raw.get("data") or {}, _section(raw, "loss")
    change = "the temperature moved from the model to the loss"
    if data.get("mode", "image_image") == "image_text" and loss.get("name", "infonce") == "infonce":
        t = 1.0 / float(old["logit_scale_init"])
        _set(loss, "learn_temperature", bool(old["learn_logit_scale"]), "the learned scale", change)
        _set(loss, "max_logit_scale", float(old["max_logit_scale"]), "the scale cap", change)
        loss["temperature"] = t  # the loss.temperature of such a run was never read
        notes.append(
            f"model.logit_scale_init/learn_logit_scale/max_logit_scale -> loss.temperature={t:.6g}"
            f", loss.learn_temperature={bool(old['learn_logit_scale'])}, loss.max_logit_scale="
            f"{float(old['max_logit_scale']):g} (image-text InfoNCE trained with the model's scale)"
        )
    else:
        notes.append(
            "model.logit_scale_init/learn_logit_scale/max_logit_scale dropped: the run trained at "
            f"loss.temperature={loss.get('temperature', 0.2)}, which evaluation now uses too"
        )
    return legacy


def _migrate_method_keys(raw: dict[str, Any], notes: list[str]) -> None:
    for cls in (LossConfig, NegativesConfig):
        kind, node = cls.KIND, raw.get(cls.KIND)
        if not isinstance(node, dict):
            continue
        defaults = {
            k: f.default for m in cls.TYPED_SETTINGS.values() for k, f in m.model_fields.items()
        }
        old = {k: node.pop(k) for k in sorted(defaults) if k in node}
        if not old:
            continue
        name = node.get("name", cls.model_fields["name"].default)
        accepted = cls.settings_model(name).model_fields
        change = f"a method's own settings moved under {kind}.<name> (issue 11)"
        own = {k: v for k, v in old.items() if k in accepted}
        if own:
            target = _section(node, name)
            for key, value in own.items():
                _set(target, key, value, f"{kind}.{name}.{key}", change)
            notes.append(f"{kind}.{{{', '.join(own)}}} -> {kind}.{name}.*")
        unread = [k for k, v in old.items() if k not in accepted and v != defaults[k]]
        if unread:
            keys = ", ".join(f"{kind}.{k}" for k in unread)
            notes.append(f"{keys} dropped: {kind}.name={name} never read them")


def _migrate_fairness(raw: dict[str, Any], notes: list[str]) -> None:
    node = raw.get("fairness")
    if not isinstance(node, dict):
        return
    old = {k: node.pop(k) for k in sorted(OLD_FAIRNESS_KEYS) if k in node}
    if not old or all(old[k] == _DEFAULTS[k] for k in old):
        return  # a run without fairness: the keys at their defaults change nothing
    terms, view, audit = new_settings(old)
    change = "the flat fairness.* keys became fairness.terms (issue 11)"
    moved = []
    if terms is not None:
        _set(node, "terms", terms, "fairness.terms", change)
        moved.append(f"fairness.terms={terms}")
    if view is not None:
        _set(node, "view", view, "fairness.view", change)
        moved.append(f"fairness.view={view}")
    if audit:
        target = _section(_section(raw, "eval"), "fairness_audit")
        for key, value in audit.items():
            _set(target, key, value, f"eval.fairness_audit.{key}", change)
        moved.append(f"eval.fairness_audit: {audit}")
    keys = ", ".join(f"fairness.{k}" for k in old)
    notes.append(f"{keys} -> {'; '.join(moved) or 'nothing (fairness was off)'}")


def migrate_run_config(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """A saved config mapping in today's spelling (see the module docstring).

    Returns:
        (the migrated mapping -- a copy, one note per change, the old ``model.*`` scale keys that
        differed from their old defaults: they entered the checkpoint's model fingerprint).

    Raises:
        ConfigError: an old key whose meaning cannot be carried over (named with the change).
    """
    raw = copy.deepcopy(raw)
    notes: list[str] = []
    legacy_model = _migrate_logit_scale(raw, notes)
    _migrate_method_keys(raw, notes)
    _migrate_fairness(raw, notes)
    return raw, notes, legacy_model


def read_run_config(
    path: Path, overrides: list[str] | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """(config, legacy model keys) of a saved ``config.yaml``, migrated and with ``overrides``.

    Raises:
        ConfigError: unreadable file, or a key that cannot be migrated (see the module docstring).
    """
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the run config {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must contain a mapping at the top level")
    raw, notes, legacy = migrate_run_config(loaded)
    for note in notes:
        logger.warning("%s (saved by an older version): %s", path, note)
    context = saved_context(raw)  # before the overrides, which are checked like user input
    return config_from_dict(apply_overrides(raw, list(overrides or [])), context), legacy


def saved_context(raw: dict[str, Any]) -> dict[str, Any]:
    """The validation context of a migrated saved mapping: its keys of another dataset, and the
    shared loss / detector keys its method never read, load as saved (a copy of each section)."""
    sections = ("data", "loss", "negatives")
    saved = {k: copy.deepcopy(raw[k]) for k in sections if isinstance(raw.get(k), dict)}
    return {"saved_data": saved.pop("data", {}), "saved_sections": saved}


def saved_run_config(loaded: dict[str, Any]) -> RunConfig:
    """A saved run config mapping (as read from ``config.yaml``) migrated to today's spelling and
    validated, without logging the migration notes (for tools reading many runs).

    Raises:
        ConfigError: a key that cannot be migrated, or a mapping that no longer validates.
    """
    raw = migrate_run_config(loaded)[0]
    return config_from_dict(raw, saved_context(raw))


def load_run_config(path: Path | str, overrides: list[str] | None = None) -> RunConfig:
    """A run's saved ``config.yaml`` (or its run directory) as a config, old keys migrated.

    For a user's own YAML use :func:`debiascl.config.load_config` (moved keys are errors there).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    return read_run_config(path, overrides)[0]
