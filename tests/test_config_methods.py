"""Per-method config sections keyed by name (issue 11, item 5).

``negatives: {name: glofnd, alpha: 0.05, glofnd: {lr: 0.05}}``: shared keys at section level, a
method's own settings under its name, validated against the registered component; the old flat
spelling is a one-line error naming the new key, and a saved run's config is migrated.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from debiascl.compose import build_detector, build_loss
from debiascl.compose.fingerprint import fingerprint_parts
from debiascl.config import dump_config, load_config, load_run_config
from debiascl.config.migrate import migrate_run_config
from debiascl.config.schema import LossConfig, NegativesConfig
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
from debiascl.negatives.detector import NoDetector
from debiascl.registry import DETECTORS, LOSSES

INFO = DatasetInfo(num_samples=10)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------ the new spelling
def test_subsection_reaches_the_component_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config("fmnist_clip_glofnd", ["negatives.glofnd.lr=0.02", "loss.sogclr.gamma=0.8"])
    rule = build_detector(cfg, INFO).rule
    assert (rule.lr, rule.beta1, rule.init) == (0.02, 0.5, "batch_quantile")  # override + YAML
    assert build_loss(cfg, INFO).gamma == 0.8
    dump_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    # the resolved file spells out every setting of the selected methods, and only theirs
    assert saved["negatives"]["glofnd"]["lr"] == 0.02
    assert saved["negatives"]["glofnd"]["moment_init"] == "binomial"
    assert saved["loss"]["sogclr"] == {"gamma": 0.8, "gamma_schedule": "cosine", "gamma_min": 0.2}
    assert {"lr", "gamma", "single", "dcl"}.isdisjoint(saved["negatives"]) and "lr" not in saved
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.negatives.settings == cfg.negatives.settings
    assert again.loss.settings == cfg.loss.settings
    assert load_run_config(tmp_path) == again  # today's spelling passes migration unchanged


def test_defaults_fill_in_without_a_subsection() -> None:
    cfg = load_config("digits_simclr", ["negatives.name=stable_glofnd"])
    assert cfg.negatives.settings["reference"] == "ema"
    assert cfg.negatives.settings["lr"] == NegativesConfig.TYPED_SETTINGS["glofnd"]().lr


def test_bad_value_in_a_subsection_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("fmnist_clip_glofnd", ["negatives.glofnd.lr=-1"])
    assert "negatives.glofnd.lr" in _one_line(err) and "greater than 0" in str(err.value)


def test_unknown_subsection_key_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("fmnist_clip_glofnd", ["negatives.glofnd.learning_rate=0.1"])
    text = _one_line(err)
    assert "unknown key 'negatives.glofnd.learning_rate'" in text
    assert all(k in text for k in ("lr", "beta1", "moment_init", "reset_on_resume"))
    # a key of another method says whose it is
    with pytest.raises(ConfigError) as err:
        load_config("fmnist_clip_glofnd", ["negatives.glofnd.ema_decay=0.9"])
    assert "ema_decay is read by negatives.stable_glofnd" in _one_line(err)
    # a subsection under an unregistered name: the registry's error, its names listed
    with pytest.raises(ConfigError) as err:
        load_config(None, ["loss.name=sogclr2", "loss.sogclr2.gamma=0.5"])
    assert "unknown loss 'sogclr2'; choose one of" in _one_line(err) and "sogclr" in str(err.value)


def test_subsection_of_another_method_is_refused_and_null_removes_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("fmnist_clip_glofnd", ["negatives.name=fnc"])
    text = _one_line(err)
    assert "negatives.glofnd" in text and "negatives.name=fnc" in text
    assert "negatives.glofnd=null" in text
    # (fnc does not read update_start_epoch either: reset to its default, see test_unread_keys)
    to_fnc = ["negatives.name=fnc", "negatives.glofnd=null", "negatives.update_start_epoch=null"]
    cfg = load_config("fmnist_clip_glofnd", to_fnc)
    assert cfg.negatives.settings == {} and "glofnd" not in cfg.negatives.model_dump()
    with pytest.raises(ConfigError, match="loss.sogclr holds settings of sogclr"):
        load_config("fmnist_clip_glofnd", ["loss.name=infonce"])
    # a method without settings of its own takes none
    with pytest.raises(ConfigError, match="negatives.name=fnc has no settings of its own"):
        load_config(None, ["negatives.name=fnc", "negatives.fnc.alpha=0.1"])


def test_an_unknown_section_key_names_the_section_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["negatives.alhpa=0.1"])
    text = _one_line(err)
    assert "unknown key 'negatives.alhpa'" in text and "alpha" in text and "glofnd" in text


# ------------------------------------------------------------------ the old flat spelling
def _old_keys(section: type) -> list[tuple[str, str]]:
    """(old key, a method that reads it) for every setting that moved under a method."""
    out = {}
    for name, model in section.TYPED_SETTINGS.items():
        for key in model.model_fields:
            out.setdefault(key, name)
    return sorted(out.items())


@pytest.mark.parametrize(
    ("kind", "key", "name"),
    [("loss", k, n) for k, n in _old_keys(LossConfig)]
    + [("negatives", k, n) for k, n in _old_keys(NegativesConfig)],
)
def test_every_old_flat_key_names_its_new_home(kind: str, key: str, name: str) -> None:
    value = "x"  # any value: the old key is refused before its value is checked
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{kind}.name={name}", f"{kind}.{key}={value}"])
    text = _one_line(err)
    assert f"{kind}.{key} moved: use {kind}.{name}.{key}" in text
    # the named key is an override that works (same value type as the default)
    model = (LossConfig if kind == "loss" else NegativesConfig).TYPED_SETTINGS[name]
    default = model.model_fields[key].default
    cfg = load_config(None, [f"{kind}.name={name}", f"{kind}.{name}.{key}={json.dumps(default)}"])
    assert getattr(cfg, kind).settings[key] == default


def test_old_key_for_a_method_that_never_read_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["negatives.name=fnc", "negatives.lr=0.1"])
    text = _one_line(err)
    assert "negatives.glofnd.lr" in text and "negatives.single.lr" in text and "delete it" in text


def test_old_key_in_a_users_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("loss:\n  name: sogclr\n  gamma: 0.5\n")
    with pytest.raises(ConfigError, match=r"loss\.gamma moved: use loss\.sogclr\.gamma"):
        load_config(str(path))


# ------------------------------------------------------------------ saved runs
OLD_SAVED = {
    "loss": {
        "name": "sogclr",
        "temperature": 0.2,
        "gamma": 1.0,
        "gamma_schedule": "cosine",
        "gamma_min": 0.2,
        "eta": 0.1,
        "beta": 0.0,
        "eta_source": "auto",
        "ssd_a": 0.2,
        "table_placement": "device",
    },
    "negatives": {
        "name": "glofnd",
        "alpha": 0.05,
        "start_epoch": 2,
        "update_start_epoch": 1,
        "optimizer": "adam",
        "lr": 0.05,
        "beta1": 0.5,
        "init": "batch_quantile",
        "moment_init": "binomial",
        "reset_on_resume": False,
        "text_rule": "fixed",
        "reference": "initial",  # never read by glofnd
        "alpha_scale": 1.0,
    },
}


def _hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def test_old_saved_config_is_migrated_with_its_fingerprint(tmp_path: Path) -> None:
    new, notes, _ = migrate_run_config(OLD_SAVED)
    assert new["loss"]["sogclr"] == {"gamma": 1.0, "gamma_schedule": "cosine", "gamma_min": 0.2}
    assert new["negatives"]["glofnd"]["beta1"] == 0.5
    assert "lr" not in new["negatives"] and "eta" not in new["loss"]
    assert any("negatives.reference dropped" in n for n in notes)  # not at its default
    assert not any("alpha_scale" in n or "loss.eta " in n for n in notes)  # defaults: silent
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(OLD_SAVED))
    cfg = load_run_config(tmp_path)
    assert cfg.negatives.settings["init"] == "batch_quantile" and cfg.loss.settings["gamma"] == 1
    # the checkpoint's parts were hashed from the flat sections at non-default values
    parts = fingerprint_parts(cfg, 10)
    flat_loss = {"name": "sogclr", "gamma": 1.0, "gamma_schedule": "cosine"}
    flat_negatives = {
        "name": "glofnd",
        "start_epoch": 2,
        "update_start_epoch": 1,
        "beta1": 0.5,
        "init": "batch_quantile",
        "moment_init": "binomial",
    }
    assert parts["loss"] == _hash(flat_loss)
    assert parts["negatives"] == _hash(flat_negatives)


def test_old_and_new_spelling_disagreeing_cannot_be_migrated() -> None:
    raw = {"negatives": {"name": "glofnd", "lr": 0.05, "glofnd": {"lr": 0.01}}}
    with pytest.raises(ConfigError, match="old and the new spelling of negatives.glofnd.lr"):
        migrate_run_config(raw)


# ------------------------------------------------------------------ the registry decides
class _KDetector(NoDetector):
    """Toy detector with one setting of its own (``k``) and a shared one (``alpha``)."""

    def __init__(self, alpha: float, k: int = 1) -> None:
        super().__init__()
        self.alpha, self.k = alpha, k


def _toy_loss(temperature: float, width: float = 1.0) -> object:
    return ("toy", temperature, width)


def test_a_registered_component_gets_its_subsection_with_no_schema_edit(monkeypatch) -> None:
    # the registrations (undone after the test: other tests iterate over every registered name)
    monkeypatch.setitem(DETECTORS._builders, "toy_k", _KDetector)
    monkeypatch.setitem(LOSSES._builders, "toy_width", _toy_loss)
    cfg = load_config(
        None,
        [
            "negatives.name=toy_k",
            "negatives.alpha=0.2",
            "negatives.toy_k.k=3",
            "loss.name=toy_width",
            "loss.toy_width.width=2.5",
        ],
    )
    detector = build_detector(cfg, INFO)
    assert isinstance(detector, _KDetector) and (detector.alpha, detector.k) == (0.2, 3)
    assert build_loss(cfg, INFO) == ("toy", 0.2, 2.5)  # the shared temperature, its own width
    # types come from the signature; unknown keys list the signature's settings
    with pytest.raises(ConfigError, match="negatives.toy_k.k"):
        load_config(None, ["negatives.name=toy_k", "negatives.toy_k.k=many"])
    with pytest.raises(ConfigError) as err:
        load_config(None, ["negatives.name=toy_k", "negatives.toy_k.alpha=0.1"])
    assert "(valid keys: k)" in _one_line(err)  # alpha is a shared key, not toy_k's own
