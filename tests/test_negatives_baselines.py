"""Baseline detectors: FNC batch quantile, one shared lambda, label oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from debiascl.errors import ConfigError, DataError
from debiascl.negatives.fnc import FNCDetector
from debiascl.negatives.oracle import OracleDetector
from debiascl.negatives.single import SingleThresholdDetector
from debiascl.objectives import StepContext
from debiascl.pairs import clip_pairs, simclr_pairs


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.5])
def test_fnc_removes_each_rows_top_alpha_negatives(alpha):
    torch.manual_seed(0)
    batch = simclr_pairs(torch.randn(10, 6), torch.randn(10, 6), torch.arange(10))
    keep = FNCDetector(alpha)(batch, StepContext())
    sim = batch.sim.detach().double().numpy()
    for r in range(sim.shape[0]):
        negs = batch.neg_mask[r].nonzero().squeeze(1).numpy()
        q = np.quantile(sim[r, negs], 1 - alpha)  # numpy's default (linear) quantile, float64
        removed = set(negs[sim[r, negs] > q].tolist())
        assert set((~keep[r]).nonzero().squeeze(1).tolist()) == removed
        assert len(removed) == math.ceil(alpha * (len(negs) - 1) - 1e-9)
    assert FNCDetector(alpha, start_epoch=2)(batch, StepContext(epoch=1)).all()


def test_single_lambda_pools_every_anchor():
    torch.manual_seed(1)
    det = SingleThresholdDetector(0.25, mode="image_text", optimizer="sgd", lr=2.0)
    det.tables["image_to_text"].data[0, 0] = 0.1
    i2t, _ = clip_pairs(torch.randn(6, 4), torch.randn(6, 4), torch.arange(6))
    keep = det(i2t, StepContext())
    sim = i2t.sim.detach().double()
    frac = ((sim > 0.1) & i2t.neg_mask).sum() / i2t.neg_mask.sum()
    want = min(max(0.1 - 2.0 * (0.25 - float(frac)), -1.0), 1.0)
    lam = float(det.tables["image_to_text"].data[0, 0])
    assert lam == pytest.approx(want, abs=1e-6)
    assert torch.equal(keep, i2t.sim.detach() <= lam)
    assert det.diagnostics()["lambda/image_to_text/value"] == pytest.approx(want, abs=1e-6)
    with pytest.raises(ConfigError):
        SingleThresholdDetector(1.0)


def test_oracle_drops_same_label_negatives_and_needs_labels():
    labels = torch.tensor([0, 1, 0, 2])
    batch = simclr_pairs(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4), labels)
    keep = OracleDetector()(batch, StepContext())
    same = batch.same_label_mask()
    assert not (keep & same).any() and (keep | ~batch.neg_mask | same).all()
    with pytest.raises(DataError, match="labels"):
        OracleDetector()(
            simclr_pairs(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4)), StepContext()
        )


@pytest.mark.parametrize(
    "shape", [(3, 8), (5, 512), (4, 1016), (2, 13), (3, 2040), (3, 2048), (3, 4096), (2, 6136)]
)
def test_count_true_matches_sum(shape):
    from debiascl.negatives.thresholds import count_true

    torch.manual_seed(shape[1])
    mask = torch.rand(shape) > 0.3
    assert torch.equal(count_true(mask), mask.sum(1))
    assert torch.equal(
        count_true(torch.ones(shape, dtype=torch.bool)), torch.full((shape[0],), shape[1])
    )
    if shape[0] > 1:
        assert torch.equal(count_true(mask[1:]), mask[1:].sum(1))  # offset views
