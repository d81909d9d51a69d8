"""Settings that used to be silently ignored are one-line errors: ``debiascl eval`` overrides it
cannot use, data keys of another dataset, and old flat fairness keys at their default value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_helpers import SMALL, cli, one_line_error
from debiascl.config import dump_config, load_config, load_run_config
from debiascl.errors import ConfigError

TINY = [*SMALL, "train.max_steps=2", "data.train_size=64", "data.test_size=40"]


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory) -> Path:
    """A tiny trained image-image run on digits."""
    run = tmp_path_factory.mktemp("ignored") / "run"
    from debiascl.cli import main

    assert main(["train", "digits_simclr", "--run-dir", str(run), "--no-eval", *TINY]) == 0
    return run


def _files(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochs=5", "train.epochs"),
        ("loss.temperature=0.5", "loss.temperature"),
        ("model.width=8", "model.width"),
        ("seed=3", "seed"),
        ("data.blur=true", "data.blur"),
    ],
)
def test_eval_refuses_overrides_it_cannot_use(capsys, simclr_run, override, needle):
    before = _files(simclr_run)
    code, _, err = cli(capsys, ["eval", str(simclr_run), override])
    assert code == 2
    one_line_error(err, f"cannot change {needle} ", "eval.*", "data.test_manifest", "train.device")
    assert _files(simclr_run) == before  # refused before any work: no eval.json


@pytest.mark.parametrize(
    "override", ["eval.zero_shot=true", "eval.retrieval=true", "eval.zero_shot_templates=['{}']"]
)
def test_eval_refuses_text_evaluation_on_an_image_image_run(capsys, simclr_run, override):
    code, _, err = cli(capsys, ["eval", str(simclr_run), override])
    assert code == 2
    one_line_error(err, override.split("=")[0], "image-text run", "data.mode=image_image")


def test_eval_accepts_eval_data_and_runtime_overrides(capsys, simclr_run, tmp_path):
    out = tmp_path / "e.json"
    argv = ["eval", str(simclr_run), "--output", str(out), "eval.linear_probe_fractions=[1.0]"]
    argv += ["eval.knn_k=3", "train.threads=1", "train.device=cpu", "eval.zero_shot=false"]
    code, _, err = cli(capsys, [*argv, "data.test_size=20"])
    assert code == 0, err
    assert json.loads(out.read_text())["knn"]["k"] == 3


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.manifest=/nope.csv"], "data.manifest is only read with data.dataset=manifest"),
        (["data.label_column=y"], "data.label_column is only read with data.dataset=manifest"),
        (["data.root=/tmp"], "data.root is only read with data.dataset=fashion_mnist or"),
        (["data.synthetic_style=tint"], "data.synthetic_style is only read with data.dataset=syn"),
        (["data.on_bad_image=skip"], "data.on_bad_image is only read with data.dataset=image_f"),
    ],
)
def test_train_refuses_data_keys_of_another_dataset(capsys, tmp_path, overrides, needle):
    run = tmp_path / "run"
    argv = ["train", "digits_simclr", "--run-dir", str(run), "--no-eval", *TINY, *overrides]
    code, _, err = cli(capsys, argv)
    assert code == 2
    one_line_error(err, needle, "(now: digits)")
    assert not run.exists()


def test_data_keys_at_their_default_or_of_the_dataset_are_fine(tmp_path):
    assert load_config("digits_simclr", ["data.manifest=null", "data.label_column=label"])
    cfg = load_config("digits_simclr", ["data.dataset=manifest", "data.label_column=y"])
    assert cfg.data.label_column == "y"
    with pytest.raises(ConfigError, match="data.synthetic_correlation is only read"):
        load_config("fmnist_simclr", ["data.synthetic_correlation=0.7"])
    # a run saved before the check, with a key its dataset ignored, still loads (and evaluates);
    # a user override of another such key on it is refused
    saved = tmp_path / "config.yaml"
    dump_config(load_config("digits_simclr"), saved)
    raw = yaml.safe_load(saved.read_text())
    raw["data"]["label_column"] = "y"
    saved.write_text(yaml.safe_dump(raw))
    assert load_run_config(saved).data.label_column == "y"
    with pytest.raises(ConfigError, match="data.id_column is only read"):
        load_run_config(saved, ["data.id_column=sid"])


def test_eval_refuses_data_keys_of_the_runs_dataset(capsys, simclr_run):
    code, _, err = cli(capsys, ["eval", str(simclr_run), "data.test_manifest=/nope.csv"])
    assert code == 2
    one_line_error(err, "data.test_manifest is only read with data.dataset=manifest")


@pytest.mark.parametrize("override", ["fairness.weight=1", "fairness.enabled=false"])
def test_old_fairness_key_at_its_default_is_refused_in_user_input(capsys, tmp_path, override):
    run = tmp_path / "run"
    argv = ["train", "digits_simclr", "--run-dir", str(run), "--no-eval", *TINY, override]
    code, _, err = cli(capsys, argv)
    assert code == 2
    one_line_error(err, f"{override.split('=')[0]} moved: use ")
    assert not run.exists()
    user_yaml = tmp_path / "mine.yaml"
    user_yaml.write_text("fairness:\n  enabled: false\n  bootstrap: 200\n")
    with pytest.raises(ConfigError, match="fairness.bootstrap, fairness.enabled moved"):
        load_config(str(user_yaml))


def test_saved_run_config_with_old_default_fairness_keys_still_loads(tmp_path):
    saved = tmp_path / "config.yaml"
    dump_config(load_config("digits_simclr"), saved)
    raw = yaml.safe_load(saved.read_text())
    raw["fairness"].update({"enabled": False, "weight": 1.0, "bootstrap": 200})
    saved.write_text(yaml.safe_dump(raw))
    assert load_run_config(saved).fairness.terms == []
