"""Checkpoint fingerprints: what must match to resume, and what may change."""

from __future__ import annotations

from debiascl.config import load_config
from debiascl.train.checkpoint import config_fingerprint, fingerprint_parts


def fp(*overrides: str) -> str:
    return config_fingerprint(load_config("digits_simclr", list(overrides)), 1347)


def test_spelling_out_a_default_does_not_change_the_fingerprint() -> None:
    # what makes checkpoints survive new config fields (added with their defaults)
    assert fp() == fp("negatives.alpha=0.05") == fp("fairness.balance=none")


def test_training_settings_change_it_and_evaluation_settings_do_not() -> None:
    base = fp()
    for changed in (
        "loss.temperature=0.5",
        "model.embed_dim=16",
        "optim.lr=0.1",
        "negatives.name=glofnd",
        "train.batch_size=32",
        "fairness.terms=[{name: fisher_gap, weight: 10}]",
        "fairness.view=clean",
    ):
        assert fp(changed) != base, changed
    for free in (
        "train.epochs=9",
        "eval.knn_k=5",
        "data.test_size=100",
        "eval.fairness_audit.bootstrap=0",
        "data.num_workers=2",
    ):
        assert fp(free) == base, free
    glofnd = fp("negatives.name=glofnd")
    assert fp("negatives.name=glofnd", "negatives.glofnd.reset_on_resume=true") == glofnd
    assert fp("negatives.name=glofnd", "negatives.glofnd.lr=0.01") != glofnd


def test_parts_name_the_section_that_differs() -> None:
    a = fingerprint_parts(load_config("digits_simclr"), 1347)
    b = fingerprint_parts(load_config("digits_simclr", ["loss.temperature=0.5"]), 1347)
    assert [k for k in a if a[k] != b[k]] == ["loss"]
    assert fingerprint_parts(load_config("digits_simclr"), 10)["num_samples"] != a["num_samples"]
