"""Typed config: YAML loading, overrides, clear errors, round trip of the resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest

from debiascl.config import dump_config, load_config
from debiascl.config.loader import BUILTIN_DIR
from debiascl.errors import ConfigError


def test_defaults_and_overrides() -> None:
    cfg = load_config(
        None, ["loss.temperature=0.5", "train.epochs=3", "data.attribute_columns=[a, b]"]
    )
    assert cfg.loss.temperature == 0.5
    assert cfg.train.epochs == 3
    assert cfg.data.attribute_columns == ["a", "b"]


@pytest.mark.parametrize("path", sorted(BUILTIN_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_builtin_configs_load(path: Path) -> None:
    cfg = load_config(path.stem)
    assert cfg.name


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown key 'loss.tempreature'"):
        load_config(None, ["loss.tempreature=0.1"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])


def test_out_of_range_is_named() -> None:
    with pytest.raises(ConfigError, match="negatives.alpha"):
        load_config(None, ["negatives.alpha=1.5"])


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="neither a file nor a built-in config"):
        load_config("no_such_config.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_resolved_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config("fmnist_simclr", ["seed=7"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg
