"""Shared section keys the selected loss / detector does not read are refused in user input
(YAML or overrides), accepted at their default, resettable with ``=null``, and loaded as saved
from a run's config.yaml (issue 11)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from debiascl.config import RunConfig, dump_config, load_config, load_run_config
from debiascl.config.schema import NegativesConfig
from debiascl.errors import ConfigError
from debiascl.negatives.detector import FalseNegativeDetector
from debiascl.registry import DETECTORS

ROOT = Path(__file__).resolve().parents[1]


def _message(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_key_the_detector_does_not_read_is_refused_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "oracle.yaml"
    path.write_text(yaml.safe_dump({"negatives": {"name": "oracle", "alpha": 0.2}}))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    text = _message(err)
    assert "negatives.alpha=0.2 (read by " in text and "not read by negatives.name=oracle" in text
    assert "fnc" in text and "glofnd" in text  # who reads it
    assert "negatives.alpha=null" in text


def test_a_key_the_detector_does_not_read_is_refused_in_an_override() -> None:
    with pytest.raises(
        ConfigError,
        match=r"start_epoch=2 \(read by .*\): not read by negatives.name=none",
    ):
        load_config("fmnist_simclr", ["negatives.start_epoch=2"])  # the config's detector: none
    with pytest.raises(
        ConfigError, match="update_start_epoch=1 .*: not read by negatives.name=fnc"
    ):
        load_config(None, ["negatives.name=fnc", "negatives.update_start_epoch=1"])
    # the same keys where the detector reads them
    cfg = load_config(None, ["negatives.name=fnc", "negatives.start_epoch=2"])
    assert cfg.negatives.start_epoch == 2
    cfg = load_config(None, ["negatives.name=glofnd", "negatives.update_start_epoch=1"])
    assert cfg.negatives.update_start_epoch == 1


def test_loss_keys_follow_the_loss_constructor() -> None:
    with pytest.raises(ConfigError, match="loss.table_placement=cpu .*: not read by loss.name=inf"):
        load_config(None, ["loss.table_placement=cpu"])
    with pytest.raises(ConfigError, match="max_logit_scale=50.0 .*: not read by loss.name=sog"):
        load_config(None, ["loss.name=sogclr", "loss.max_logit_scale=50"])
    assert load_config(None, ["loss.name=sogclr", "loss.table_placement=cpu"]).loss.name == "sogclr"
    # directions is read by the objective for every loss
    assert load_config(None, ["loss.name=dcl", "loss.directions=image_to_text"]).loss.name == "dcl"


def test_a_logit_scale_cap_needs_a_learned_temperature() -> None:
    # the cap acts on a learned 1/t only: with a fixed temperature it would be silently ignored
    with pytest.raises(ConfigError, match=r"max_logit_scale=50.0 \(read by loss.learn_temperatu"):
        load_config(None, ["loss.max_logit_scale=50"])
    cfg = load_config(None, ["loss.learn_temperature=true", "loss.max_logit_scale=50"])
    assert cfg.loss.max_logit_scale == 50
    # a saved run config that recorded the key still loads
    assert load_config(None, ["loss.max_logit_scale=null"]).loss.max_logit_scale == 100


def test_keys_at_their_default_are_accepted() -> None:
    default = NegativesConfig.model_fields["alpha"].default
    cfg = load_config(None, ["negatives.name=oracle", f"negatives.alpha={default}"])
    assert cfg.negatives.alpha == default


def test_text_diagnostics_is_a_shared_diagnostic_and_brings_its_evidence_settings() -> None:
    with pytest.raises(ConfigError, match="negatives.text_threshold=0.9 .*: not read by"):
        load_config(None, ["negatives.text_threshold=0.9"])
    cfg = load_config(None, ["negatives.text_diagnostics=true", "negatives.text_threshold=0.9"])
    assert cfg.negatives.name == "none" and cfg.negatives.text_threshold == 0.9
    # text_sim takes the frozen text table, so it reads the encoder (and the error says so)
    cfg = load_config(None, ["negatives.name=text_sim", "negatives.text_encoder=tfidf"])
    assert cfg.negatives.text_encoder == "tfidf"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["negatives.text_encoder=tfidf"])
    assert "(read by text_sim or negatives.text_diagnostics=true)" in _message(err)


def test_null_resets_a_shared_key_to_switch_detectors_on_the_command_line() -> None:
    switch = ["negatives.name=none", "negatives.glofnd=null"]
    with pytest.raises(ConfigError) as err:
        load_config("fmnist_simclr_glofnd", switch)
    text = _message(err)
    assert "negatives.start_epoch=3 (read by " in text
    assert "negatives.update_start_epoch=1 (read by " in text
    assert "negatives.start_epoch=null negatives.update_start_epoch=null" in text
    resets = ["negatives.start_epoch=null", "negatives.update_start_epoch=null"]
    cfg = load_config("fmnist_simclr_glofnd", [*switch, *resets])
    assert cfg.negatives.name == "none" and cfg.negatives.start_epoch == 0
    assert cfg.negatives.update_start_epoch is None
    # alpha of the file is at its default (0.05): not refused, and kept as it is
    assert cfg.negatives.alpha == 0.05


def test_a_saved_run_config_loads_as_saved_but_not_as_a_user_file(tmp_path: Path) -> None:
    cfg = RunConfig(output_dir=str(tmp_path))  # programmatic: no load-time check
    cfg.negatives.name, cfg.negatives.alpha = "oracle", 0.3
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    assert load_run_config(path).negatives.alpha == 0.3  # debiascl eval / report read it
    with pytest.raises(ConfigError, match="alpha=0.3 .*: not read by negatives.name=oracle"):
        load_config(str(path))  # as a user's YAML it is refused
    # an override on a saved config is still checked against the saved value
    with pytest.raises(ConfigError, match="negatives.alpha=0.4"):
        load_run_config(path, ["negatives.alpha=0.4"])


class _AlphaOnly(FalseNegativeDetector):
    """A toy detector reading only the target fraction."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, batch, ctx) -> torch.Tensor:  # pragma: no cover - never called
        return torch.ones_like(batch.neg_mask)


def test_a_registered_detector_reads_what_its_constructor_names(monkeypatch) -> None:
    monkeypatch.setitem(DETECTORS._builders, "alpha_only", _AlphaOnly)
    cfg = load_config(None, ["negatives.name=alpha_only", "negatives.alpha=0.2"])
    assert cfg.negatives.alpha == 0.2
    with pytest.raises(ConfigError, match="negatives.start_epoch=1 .*: not read by .*alpha_only"):
        load_config(None, ["negatives.name=alpha_only", "negatives.start_epoch=1"])


def _script(name: str):
    path = ROOT / "experiments" / name / "run.py"
    spec = importlib.util.spec_from_file_location(f"exp_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_arm_of_the_experiment_scripts_loads(tmp_path: Path) -> None:
    out = [f"output_dir={tmp_path}", "seed=0"]
    glofnd, debiased = _script("glofnd"), _script("debiased")
    arms = [(c, o) for study in glofnd.STUDIES.values() for _, c, o in study]
    arms += [(c, []) for configs in debiased.STUDIES.values() for c in configs]
    for config, overrides in arms:
        load_config(config, [*overrides, *out])
    none = load_config("fmnist_simclr_glofnd", [*glofnd.NONE, *out])
    assert none.negatives.name == "none" and "glofnd" not in none.negatives.model_dump()
