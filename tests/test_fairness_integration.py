"""The fairness audit inside training and ``debiascl eval`` (SYNTHETIC-attribute benchmark).

A tiny AdFair run (reversal, a few steps, bag-of-words text tower) must write the audit into
summary.json and fairness.txt with every key present and values in range; ``debiascl eval`` on
the run directory must reproduce it; thresholds must come from a split of the training data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from debiascl.cli import main
from debiascl.config import load_config
from debiascl.errors import ConfigError
from debiascl.eval.run_audit import HEADLINE_KEYS, validation_rows

TRAIN, TEST = 600, 300


def _overrides(run_dir: Path) -> list[str]:
    return [
        "data.train_size=600",
        "data.test_size=300",
        "model.text_encoder=bag_of_words",
        "model.width=8",
        "model.embed_dim=32",
        "model.proj_hidden_dim=64",
        "train.epochs=1",
        "train.batch_size=64",
        "train.threads=1",
        "eval.fairness_audit.few_shot_k=[1,2]",
        "eval.fairness_audit.few_shot_seeds=2",
        "eval.fairness_audit.bootstrap=10",
        "fairness.terms=[{name: adversary, hidden_dim: 16}]",
        f"output_dir={run_dir.parent}",
        f"name={run_dir.name}",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    run_dir = tmp_path_factory.mktemp("fair") / "adfair"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "synth_attr_adfair", *_overrides(run_dir)])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, summary, out.getvalue()


def _in01(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and 0.0 <= x <= 1.0


def test_training_writes_the_audit(run: tuple[Path, dict, str]) -> None:
    run_dir, summary, stdout = run
    audit = summary["fairness"]
    assert audit["audited_attributes"] == ["synthetic_mark"]
    assert "SYNTHETIC" in audit["note"]
    assert {"zero_shot", "few_shot", "leakage", "headline", "validation"} <= set(audit)
    # thresholds from a validation split of the training data, never the test split
    val = audit["validation"]
    assert "training split" in val["source"]
    assert val["n_val"] == round(0.2 * TRAIN) and val["n_val"] + val["n_fit"] == TRAIN
    assert val["n_test"] == TEST
    zs = audit["zero_shot"]
    rep = zs["fairness"]["attributes"]["synthetic_mark"]
    for key in ("auc", "worst_group_auc", "dpd", "eod", "auc_gap", "es_auc"):
        assert _in01(rep[key]), (key, rep[key])
    assert rep["worst_group_auc"] <= rep["auc"] + rep["auc_gap"] + 1e-12
    # macro average over the 10 one-vs-rest tasks; each task's DPD is its group rate difference
    per_class = rep["per_class"]
    assert len(per_class) == 10
    dpds = []
    for task in per_class.values():
        groups = task["groups"]
        assert set(groups) == {"marked", "unmarked"}
        assert sum(g["n"] for g in groups.values()) == TEST
        rates = [g["positive_rate"] for g in groups.values()]
        assert task["summary"]["dpd"] == pytest.approx(max(rates) - min(rates), abs=1e-12)
        dpds.append(task["summary"]["dpd"])
    assert rep["dpd"] == pytest.approx(float(np.mean(dpds)), abs=1e-12)
    assert zs["fairness"]["decision"] == "threshold by youden on validation"
    assert len(zs["fairness"]["threshold"]) == 10  # one validation threshold per class
    assert _in01(zs["accuracy"])
    # the audit's zero-shot accuracy equals the separate zero-shot evaluation (same prompts)
    assert zs["accuracy"] == pytest.approx(summary["zero_shot"]["accuracy"], abs=1e-9)
    for k in ("1-shot", "2-shot"):
        entry = audit["few_shot"][k]
        assert len(entry["per_seed"]) == 2
        assert _in01(entry["synthetic_mark"]["dpd"]["mean"])
        assert [a["probe"]["n_train"] for a in entry["per_seed"]] == [10 * int(k[0])] * 2
    for where in ("embedding", "backbone"):
        leak = audit["leakage"][where]["synthetic_mark"]
        for key in ("accuracy", "balanced_accuracy", "auc", "chance_accuracy"):
            assert _in01(leak[key])
        assert leak["n_train"] == val["n_fit"] and leak["n_test"] == TEST
        assert leak["chance_auc"] == 0.5 and 0.5 <= leak["chance_accuracy"] < 0.6
    head = audit["headline"]
    assert set(head) == set(HEADLINE_KEYS)
    assert head["zero_shot_dpd"] == rep["dpd"]
    assert head["leakage_embedding_auc"] == audit["leakage"]["embedding"]["synthetic_mark"]["auc"]
    # readable table in the run directory and on stdout
    text = (run_dir / "fairness.txt").read_text()
    assert "zero_shot | synthetic_mark" in text and "leakage/embedding/synthetic_mark" in text
    assert "SYNTHETIC" in text
    assert "Fairness audit" in stdout and "ZS DPD" in stdout
    # the adversary trained (its logs are in the epoch record)
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert "adv/synthetic_mark/disc_acc_epoch" in record


def test_eval_reproduces_the_audit(run: tuple[Path, dict, str]) -> None:
    run_dir, summary, _ = run
    (run_dir / "fairness.txt").unlink()
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", str(run_dir)]) == 0
    ev = json.loads((run_dir / "eval.json").read_text())["fairness"]
    tr = summary["fairness"]
    for key in HEADLINE_KEYS:
        a, b = tr["headline"][key], ev["headline"][key]
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6), key
    assert ev["few_shot"]["2-shot"]["synthetic_mark"]["eod"]["per_seed"] == pytest.approx(
        tr["few_shot"]["2-shot"]["synthetic_mark"]["eod"]["per_seed"], abs=1e-6
    )
    assert (run_dir / "fairness.txt").is_file()


def test_validation_rows_split_training_data() -> None:
    labels = torch.arange(10).repeat(50)
    val, fit = validation_rows(labels, 0.2, seed=3)
    assert val.size == 100 and fit.size == 400
    assert np.intersect1d(val, fit).size == 0
    assert np.array_equal(np.sort(np.concatenate([val, fit])), np.arange(500))
    assert np.array_equal(np.bincount(labels.numpy()[val]), np.full(10, 10))  # stratified
    with pytest.raises(ConfigError):
        validation_rows(torch.zeros(1, dtype=torch.int64), 0.5, seed=0)


def test_unknown_audit_attribute_is_a_config_error(tmp_path: Path) -> None:
    from debiascl.train.trainer import Trainer

    cfg = load_config(
        "synth_attr_clip",
        [*_overrides(tmp_path / "x"), "eval.fairness_audit.attributes=[sex]", "train.max_steps=1"],
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="sex"):
        trainer.evaluate()


def test_plain_data_has_no_audit(tmp_path: Path) -> None:
    from debiascl.eval.run_audit import has_attributes
    from debiascl.train.trainer import Trainer

    cfg = load_config(
        "fmnist_clip",
        [*_overrides(tmp_path / "y"), "data.dataset=fashion_mnist", "fairness.terms=[]"],
    )
    assert not has_attributes(Trainer(cfg, run_dir=tmp_path / "y").data)


def test_feature_adversary_with_balance_and_mean_gap_trains(tmp_path: Path) -> None:
    """fairness.on=feature + balance=label + mean_gap_weight through the real trainer: the
    discriminator is built on the backbone width and every adversary log is finite."""
    import contextlib
    import io

    run_dir = tmp_path / "feat"
    extra = [
        "fairness.on=feature",
        "fairness.balance=label",
        "fairness.terms=[{name: adversary, hidden_dim: 16, method: alternating}, "
        "{name: mean_gap, weight: 1}]",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--no-eval", "synth_attr_adfair", *_overrides(run_dir), *extra])
    assert code == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "mean_gap/synthetic_mark_epoch" in r][-1]
    for key in ("mean_gap/synthetic_mark", "adv/synthetic_mark/disc_weighted_acc",
                "adv/synthetic_mark/disc_ce", "loss/adversary", "loss/mean_gap"):  # fmt: skip
        assert math.isfinite(last.get(f"{key}_epoch", last.get(key, math.nan))), key
    state = torch.load(next((run_dir / "checkpoints").glob("*.pt")), weights_only=False)
    w = state["fairness"]["terms.adversary.core.discriminator.trunk.0.weight"]
    assert w.shape[1] == 8 * 8  # small_cnn width 8 -> backbone feature 64, not embed_dim 32
