"""Load a :class:`RunConfig` from YAML plus ``dotted.key=value`` overrides, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from debiascl.config.fairness_moves import reject_old_fairness_keys
from debiascl.config.schema import MOVED_KEYS, RunConfig
from debiascl.config.sections.methods import refuse_unread_keys
from debiascl.errors import ConfigError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a built-in config (``fmnist_simclr``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if builtin.is_file():
        return builtin
    names = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a built-in config ({names})")


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (values parsed as YAML) in a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def _format_validation_error(err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown key {where!r}")
        else:
            problems.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config: " + "; ".join(problems)


def _reject_moved_keys(raw: dict[str, Any]) -> None:
    """A key that moved to another section is an error naming its new home."""
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        node = raw.get(section)
        if isinstance(node, dict) and key in node:
            raise ConfigError(
                f"{old} was removed: use {new}; in a saved run's config.yaml delete the model.* "
                "logit-scale keys and set the loss keys to what the run trained with"
            )


def config_from_dict(raw: dict[str, Any], context: dict[str, Any] | None = None) -> RunConfig:
    """A validated config from a mapping (``context``: pydantic validation context;
    ``context["saved_sections"]``: a saved run's ``loss`` / ``negatives`` mappings, whose keys
    are accepted at their saved values even where the method does not read them)."""
    _reject_moved_keys(raw)
    reject_old_fairness_keys(raw)
    try:
        cfg = RunConfig.model_validate(raw, context=context)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
    saved = (context or {}).get("saved_sections") or {}
    for section in (cfg.loss, cfg.negatives):
        refuse_unread_keys(section, saved.get(section.KIND))
    return cfg


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults) and apply overrides."""
    raw: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "parse error"
            raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must contain a mapping at the top level")
        raw = loaded or {}
    return config_from_dict(apply_overrides(raw, overrides or []))


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as a mapping with every default filled in, the selected loss's and detector's
    own settings included (``loss.<name>``, ``negatives.<name>``, when they have any)."""
    out = cfg.model_dump(mode="json")
    for key in ("loss", "negatives"):
        section = getattr(cfg, key)
        own = section.settings_model(section.name).model_validate(section.settings)
        if type(own).model_fields:
            out[key][section.name] = own.model_dump(mode="json")
    return out


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    path.write_text(yaml.safe_dump(resolved_config(cfg), sort_keys=False))
