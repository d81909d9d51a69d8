"""Run directories saved before keys moved (issue 11): their config.yaml is read in today's
spelling, ``debiascl eval`` loads only the model weights, and results match a current run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from debiascl.cli import main
from debiascl.config import config_from_dict, load_config, load_run_config
from debiascl.config.migrate import migrate_run_config
from debiascl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
#: The flat fairness section of synth_attr_adfair.yaml before fairness terms, as runs saved it.
OLD_FAIRNESS = {
    "enabled": True,
    "attributes": ["synthetic_mark"],
    "weight": 0.0,
    "mean_gap_weight": 10.0,
    "mean_gap_whiten": True,
    "on": "image",
    "adversary_view": "clean",
    "warmup_epochs": 1.0,
    "audit_val_fraction": 0.25,
    "few_shot_k": [1, 16],
    "bootstrap": 100,
}


def test_old_model_scale_keys_of_image_text_infonce_become_the_loss_temperature() -> None:
    raw = {
        "data": {"mode": "image_text"},
        "model": {"logit_scale_init": 20.0, "learn_logit_scale": False, "width": 8},
        "loss": {"name": "infonce", "temperature": 0.2},  # never read by such a run
    }
    new, notes, legacy = migrate_run_config(raw)
    assert new["loss"] == {
        "name": "infonce",
        "temperature": 1 / 20.0,
        "learn_temperature": False,
        "max_logit_scale": 100.0,
    }
    assert new["model"] == {"width": 8}
    assert legacy == {"logit_scale_init": 20.0, "learn_logit_scale": False}  # old non-defaults
    assert len(notes) == 1 and "loss.temperature=0.05" in notes[0]
    assert "logit_scale_init" in raw["model"]  # the caller's mapping is left as it was


@pytest.mark.parametrize(
    "data, loss", [({"mode": "image_text"}, {"name": "ssd"}), ({"mode": "image_image"}, {})]
)
def test_old_model_scale_keys_are_dropped_where_the_loss_temperature_trained(data, loss) -> None:
    raw = {"data": data, "model": {"logit_scale_init": 2.0, "max_logit_scale": 50.0}, "loss": loss}
    new, notes, _ = migrate_run_config(raw)
    assert new["model"] == {} and new["loss"] == loss
    assert "dropped" in notes[0]


def test_old_flat_fairness_keys_become_terms_view_and_audit_settings() -> None:
    new, notes, _ = migrate_run_config({"fairness": dict(OLD_FAIRNESS)})
    assert new["fairness"] == {
        "attributes": ["synthetic_mark"],
        "on": "image",
        # weight=0 switched the adversary off; the gap did not follow its warm-up then
        "terms": [{"name": "fisher_gap", "weight": 10.0}],
        "view": "clean",
    }
    assert new["eval"]["fairness_audit"] == {
        "val_fraction": 0.25,
        "few_shot_k": [1, 16],
        "bootstrap": 100,
    }
    assert "fairness.mean_gap_weight" in notes[0] and "fisher_gap" in notes[0]
    cfg = config_from_dict(new)  # the migrated mapping is a valid config
    assert cfg.fairness.terms[0].name == "fisher_gap" and cfg.fairness.view == "clean"


def test_a_user_yaml_with_old_keys_still_fails_with_the_new_spelling(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"fairness": OLD_FAIRNESS}))
    with pytest.raises(ConfigError, match="fisher_gap"):
        load_config(str(path))
    assert load_run_config(path).fairness.terms[0].name == "fisher_gap"  # a saved run's config


def test_old_and_new_spelling_disagreeing_is_one_line_naming_the_change() -> None:
    raw = {
        "data": {"mode": "image_text"},
        "model": {"learn_logit_scale": True},
        "loss": {"learn_temperature": False},
    }
    with pytest.raises(ConfigError, match="temperature moved from the model to the loss") as err:
        migrate_run_config(raw)
    assert "\n" not in str(err.value)


def test_every_saved_experiment_config_loads(caplog) -> None:
    saved = sorted(ROOT.glob("experiments/*/results/**/config.yaml"))
    old = 0
    with caplog.at_level(logging.WARNING, logger="debiascl.config"):
        for path in saved:
            raw = yaml.safe_load(path.read_text())
            try:
                current = load_config(str(path))
            except ConfigError:  # saved before keys moved
                old += 1
                cfg = load_run_config(path)
                assert cfg.loss.name == raw["loss"]["name"]
                assert cfg.loss.temperature == raw["loss"]["temperature"]  # no image-text InfoNCE
            else:
                assert load_run_config(path) == current  # today's spelling passes unchanged
    assert old >= 27, "the debiased study's saved configs predate the moved keys"
    assert len(caplog.records) >= old  # each migration is logged


# ------------------------------------------------------------------ a whole old run directory
def _cli(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def current_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("current") / "run"
    argv = [
        "train",
        "digits_clip",
        "--run-dir",
        str(run),
        "--no-eval",
        "train.max_steps=3",
        "data.train_size=256",
        "loss.learn_temperature=true",
        "loss.max_logit_scale=50",
    ]
    assert main(argv) == 0
    return run


def _make_old(run: Path, old: Path) -> None:
    """``run`` as a version before issue 11 saved it: model.* scale keys in config.yaml, the
    learned scale in the model state, none in the objective state, the adversary-era layout."""
    shutil.copytree(run, old)
    raw = yaml.safe_load((old / "config.yaml").read_text())
    loss = raw["loss"]
    raw["model"].update(
        logit_scale_init=1 / loss.pop("temperature"),
        learn_logit_scale=loss.pop("learn_temperature"),
        max_logit_scale=loss.pop("max_logit_scale"),
    )
    raw["fairness"] = {"enabled": False, "weight": 1.0, "audit_val_fraction": 0.2}
    (old / "config.yaml").write_text(yaml.safe_dump(raw))
    # the model part of the fingerprint hashed the model section's non-default keys, old ones too
    model = load_config("digits_clip").model.model_dump(mode="json", exclude_defaults=True)
    model["max_logit_scale"] = raw["model"]["max_logit_scale"]  # 50, not the old default 100
    model_part = hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:12]
    for path in (old / "checkpoints").glob("epoch*.pt"):
        state = torch.load(path, weights_only=True)
        state["fingerprint_parts"]["model"] = model_part
        scale = state["objective"].pop("loss_fn.scale.log_scale")
        state["model"]["log_logit_scale"] = scale
        state["adversary"] = None
        torch.save(state, path)


def test_an_old_run_directory_evaluates_like_the_current_one(
    capsys, current_run, tmp_path, monkeypatch
):
    from debiascl.eval import run as evaluate_module

    old = tmp_path / "old"
    _make_old(current_run, old)
    seen: list[float] = []
    real = evaluate_module.zero_shot_eval
    monkeypatch.setattr(
        evaluate_module,
        "zero_shot_eval",
        lambda img, y, emb, scale, names: seen.append(scale) or real(img, y, emb, scale, names),
    )
    new_out, old_out = tmp_path / "new.json", tmp_path / "old.json"
    _cli(capsys, ["eval", str(current_run), "--output", str(new_out)])
    _cli(capsys, ["eval", str(old), "--output", str(old_out)])
    new, migrated = json.loads(new_out.read_text()), json.loads(old_out.read_text())
    last = sorted((current_run / "checkpoints").glob("epoch*.pt"))[-1]
    learned = torch.load(last, weights_only=True)["objective"]["loss_fn.scale.log_scale"]
    trained = float(learned.float().exp())
    assert trained != pytest.approx(1 / 0.07, abs=1e-6)  # training moved it
    assert seen == [trained, trained]  # both read the learned scale (old: from the model state)
    for key in ("linear_probe", "knn", "zero_shot", "retrieval"):
        assert migrated[key] == new[key], key
    # the trainer, too, rebuilds such a run from its saved config (resume is refused by name)
    cfg = load_run_config(old)
    assert cfg.loss.learn_temperature and cfg.loss.max_logit_scale == 50


def test_eval_builds_no_objective_optimiser_or_terms(capsys, current_run, tmp_path, monkeypatch):
    from debiascl.fairness.terms.base import FairnessTerm
    from debiascl.objectives import ContrastiveObjective
    from debiascl.train.trainer import Trainer

    def refuse(*args, **kwargs):
        raise AssertionError("debiascl eval built a training part")

    for cls in (ContrastiveObjective, FairnessTerm, Trainer, torch.optim.Optimizer):
        monkeypatch.setattr(cls, "__init__", refuse)
    out = tmp_path / "e.json"
    _cli(capsys, ["eval", str(current_run), "--output", str(out), "eval.retrieval=false"])
    assert "zero_shot" in json.loads(out.read_text())


def test_eval_refuses_a_checkpoint_of_another_model(capsys, current_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(current_run, other)
    raw = yaml.safe_load((other / "config.yaml").read_text())
    raw["model"]["embed_dim"] = 16
    (other / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["eval", str(other), "--output", str(tmp_path / "x.json")]) != 0
    err = capsys.readouterr().err.strip()
    assert "differs in: model" in err and len(err.splitlines()) == 1


def test_plain_eval_settings_mirror_the_eval_section() -> None:
    import dataclasses

    from debiascl.compose.evaluation import eval_settings
    from debiascl.config.schema import EvalConfig, FairnessAuditConfig
    from debiascl.eval.settings import AuditSettings, EvalSettings

    for plain, section, extra in (
        (EvalSettings(), EvalConfig(), {"dataset", "seed"}),
        (AuditSettings(), FairnessAuditConfig(), {"on"}),
    ):
        fields = {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)}
        assert set(fields) - extra == set(type(section).model_fields)  # same names
        for name, value in section.model_dump().items():
            if name != "fairness_audit":
                assert fields[name] == value, name  # same defaults
    cfg = load_config("synth_attr_adfair", ["fairness.on=feature", "eval.knn_k=7", "seed=3"])
    settings = eval_settings(cfg)
    assert (settings.knn_k, settings.seed, settings.dataset) == (7, 3, "synthetic_attr")
    assert settings.fairness_audit.on == "feature"
    assert settings.fairness_audit.few_shot_k == [1, 16]
