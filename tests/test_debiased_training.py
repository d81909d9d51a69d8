"""DCL / HCL / SSD through the trainer on digits: end to end, with clamp and eta diagnostics.

Also the loss's epoch diagnostics against plain recomputation, the eta summary against a direct
count, and the controlled class imbalance of the data pipeline (SSD's Fashion-MNIST study).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from debiascl.compose import build_data
from debiascl.config import load_config
from debiascl.data.build import subsample_classes_rows
from debiascl.errors import ConfigError
from debiascl.eta.summary import eta_summary
from debiascl.objectives.context import StepContext
from debiascl.objectives.debiased_loss import DebiasedLoss
from debiascl.pairs import simclr_pairs
from debiascl.train.trainer import Trainer

CASES = [
    # (config, overrides, expects a per-sample table, expects text statistics)
    ("digits_simclr", ["loss.name=dcl", "loss.dcl.eta=0.1"], False, False),
    ("digits_simclr", ["loss.name=hcl", "loss.hcl.eta=0.1", "loss.hcl.beta=1.0"], False, False),
    ("digits_simclr", ["loss.name=dcl", "loss.dcl.eta_source=class_frequency"], True, False),
    ("digits_clip",
     ["loss.name=ssd", "loss.ssd.eta_source=corpus_lm", "data.caption_templates=skewed"],
     True, True),
]  # fmt: skip


@pytest.mark.parametrize(("config", "overrides", "table", "texts"), CASES)
def test_training_logs_clamp_and_eta(tmp_path: Path, config, overrides, table, texts) -> None:
    cfg = load_config(
        config,
        [
            *overrides,
            "loss.temperature=0.5",
            "train.epochs=2",
            "data.train_size=160",
            "train.batch_size=32",
            f"output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    summary = trainer.fit(evaluate=False)
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records) == 2
    for rec in records:
        assert math.isfinite(rec["loss"])
        clamped = rec["negatives/clamped_fraction"]
        assert 0.0 <= clamped <= 1.0
        # The epoch value is the anchor-weighted mean of the per-step logs (equal-size steps).
        step_keys = [
            k
            for k in rec
            if k.split("/")[-1] == "clamped_fraction" and not k.startswith("negatives/")
        ]
        assert step_keys
        assert clamped == pytest.approx(np.mean([rec[k] for k in step_keys]), abs=1e-9)
        assert rec["negatives/mean_negatives"] > 0
        if table:
            assert 0 < rec["negatives/eta_table_min"] <= rec["negatives/eta_table_max"] < 1
        else:
            assert "negatives/eta_table_mean" not in rec
            assert rec["negatives/eta_mean"] == pytest.approx(0.1)
    assert summary["fn_detection"]["clamped_fraction"] == records[-1]["negatives/clamped_fraction"]

    loss_fn = trainer.objective.loss_fn
    artifacts = loss_fn.artifacts()
    if not table:
        assert artifacts == {}
        return
    report = artifacts["eta_summary.json"]
    json.dumps(report)  # JSON-serialisable for the run directory
    eta = loss_fn.eta_table.double().numpy()
    assert report["count"] == eta.size
    assert sum(report["histogram"]["counts"]) == eta.size
    assert records[0]["negatives/eta_table_mean"] == pytest.approx(eta.mean())
    if texts:
        rho = records[0]["negatives/eta_table_spearman_text_count"]
        assert rho == pytest.approx(report["spearman_vs_text_count"])
        assert -1 <= rho <= 1
    else:
        # class_frequency: the table *is* each sample's class share.
        labels = trainer.info.labels.numpy()
        share = np.bincount(labels)[labels] / labels.size
        np.testing.assert_allclose(eta, share, rtol=1e-6)


def test_diagnostics_accumulate_over_steps_and_reset() -> None:
    torch.manual_seed(0)
    loss = DebiasedLoss(eta=torch.tensor([0.02, 0.3, 0.1, 0.25, 0.05, 0.2]), num_samples=6)
    ctx = StepContext(epoch=0, step=0, training=True, progress=0.0)
    clamped = anchors = 0
    eta_sum = 0.0
    for scale in (0.5, 3.0):  # an easy-positive batch to get clamped anchors
        z1 = torch.randn(6, 8)
        z2 = z1 + 0.3 * torch.randn(6, 8)
        z1, z2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
        batch = simclr_pairs(z1, z2, torch.arange(6))
        t = 1.0 / scale
        terms = loss(batch, torch.ones_like(batch.neg_mask), torch.tensor(scale), ctx)
        # Plain clamp check: corrected negative term at or below the floor N e^{-1/t}.
        logits = batch.sim.double() * scale
        pos = logits.gather(1, batch.pos_index[:, None])[:, 0]
        eta = loss.eta_table[batch.anchor_ids].double()
        for i in range(logits.shape[0]):
            neg = logits[i][batch.neg_mask[i]]
            n = neg.numel()
            ng = (neg.exp().sum() - n * eta[i] * pos[i].exp()) / (1 - eta[i])
            clamped += int(ng <= n * math.exp(-1.0 / t))
        anchors += terms.loss.numel()
        eta_sum += float(eta.sum())
    diag = loss.diagnostics()
    assert diag["clamped_fraction"] == pytest.approx(clamped / anchors)
    assert 0 < clamped < anchors  # the check exercised both branches
    assert diag["eta_mean"] == pytest.approx(eta_sum / anchors)
    assert diag["mean_negatives"] == pytest.approx(10.0)  # 2B - 2 with B = 6
    assert "clamped_fraction" not in loss.diagnostics()  # reset by the first call


def test_eta_summary_by_class_and_text_count() -> None:
    texts = ["a", "a", "a", "b", "b", "c", None]
    eta = torch.tensor([0.3, 0.3, 0.3, 0.2, 0.2, 0.1, float("nan")])
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    out = eta_summary(eta, texts, labels=labels, log_it=False)
    counts = Counter(t for t in texts if t is not None)
    expected: dict[str, list[float]] = {}
    for t, e in zip(texts, eta.tolist(), strict=True):
        if t is not None:
            expected.setdefault(str(counts[t]), []).append(e)
    assert out["by_text_count"] == {k: pytest.approx(np.mean(v)) for k, v in expected.items()}
    assert out["spearman_vs_text_count"] == pytest.approx(1.0)  # eta grows with repetition
    by_class = out["by_class"]
    assert by_class["0"] == {"n": 2, "mean_eta": pytest.approx(0.3), "class_frequency": 2 / 7}
    assert by_class["1"]["mean_eta"] == pytest.approx((0.3 + 0.2 + 0.2) / 3)
    assert by_class["2"]["mean_eta"] == pytest.approx(0.1)  # NaN entry ignored


def test_subsample_classes_rows() -> None:
    labels = np.repeat(np.arange(4), [50, 40, 30, 20])
    rows = subsample_classes_rows(labels, [1, 3], 0.1, seed=5)
    kept = np.bincount(labels[rows], minlength=4)
    assert kept.tolist() == [50, 4, 30, 2]
    assert np.array_equal(rows, np.sort(rows))
    assert np.array_equal(rows, subsample_classes_rows(labels, [1, 3], 0.1, seed=5))
    assert not np.array_equal(rows, subsample_classes_rows(labels, [1, 3], 0.1, seed=6))
    assert np.bincount(labels[subsample_classes_rows(labels, [2], 0.001, 0)])[2] == 1
    with pytest.raises(ConfigError, match="subsample_classes"):
        subsample_classes_rows(labels, [7], 0.5, seed=0)


def test_build_data_imbalance_leaves_test_split_balanced() -> None:
    cfg = load_config(
        "digits_simclr", ["data.subsample_classes=[0,3]", "data.subsample_fraction=0.25"]
    )
    full = build_data(load_config("digits_simclr").data, 0)
    data = build_data(cfg.data, 0)
    before = torch.bincount(full.train.labels, minlength=10)
    after = torch.bincount(data.train.labels, minlength=10)
    for c in range(10):
        want = math.floor(0.25 * int(before[c]) + 0.5) if c in (0, 3) else int(before[c])
        assert int(after[c]) == want
    assert torch.equal(data.test.labels, full.test.labels)
    assert torch.equal(data.train.ids, torch.arange(len(data.train)))
