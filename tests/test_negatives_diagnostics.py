"""Detection diagnostics against a plain per-anchor loop."""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.negatives.diagnostics import DetectionStats
from debiascl.pairs import simclr_pairs


def _reference(batches: list[tuple]) -> dict[str, float]:
    removed = negatives = 0
    precisions, recalls = [], []
    for batch, keep in batches:
        for a in range(batch.num_anchors):
            neg = [j for j in range(batch.sim.shape[1]) if batch.neg_mask[a, j]]
            rem = [j for j in neg if not keep[a, j]]
            same = [j for j in neg if batch.candidate_labels[j] == batch.anchor_labels[a]]
            hit = [j for j in rem if j in same]
            removed += len(rem)
            negatives += len(neg)
            if rem:
                precisions.append(len(hit) / len(rem))
            if same:
                recalls.append(len(hit) / len(same))
    p = sum(precisions) / len(precisions)
    r = sum(recalls) / len(recalls)
    return {
        "removed_fraction": removed / negatives,
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r),
    }


def test_matches_per_anchor_loop_over_several_batches() -> None:
    g = torch.Generator().manual_seed(0)
    stats = DetectionStats()
    seen = []
    for _ in range(3):
        ids = torch.arange(6)
        labels = torch.randint(0, 3, (6,), generator=g)
        batch = simclr_pairs(
            torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), ids, labels
        )
        keep = torch.rand(12, 12, generator=g) > 0.3
        stats.update(batch, keep)
        seen.append((batch, keep))
    got = stats.compute()
    for key, value in _reference(seen).items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_without_labels_only_the_removed_fraction_and_reset() -> None:
    batch = simclr_pairs(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4))
    stats = DetectionStats()
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[0, 2] = False
    stats.update(batch, keep)
    out = stats.compute()
    assert set(out) == {"removed_fraction"}
    assert out["removed_fraction"] == pytest.approx(1 / (8 * 6))
    stats.reset()
    assert stats.compute()["removed_fraction"] == 0.0


def test_nothing_removed_gives_undefined_precision() -> None:
    batch = simclr_pairs(
        torch.randn(4, 3), torch.randn(4, 3), torch.arange(4), torch.tensor([0, 0, 1, 1])
    )
    stats = DetectionStats()
    stats.update(batch, torch.ones(8, 8, dtype=torch.bool))
    out = stats.compute()
    assert math.isnan(out["precision"]) and out["recall"] == 0.0
    restored = DetectionStats()
    restored.load_state(stats.state())
    assert restored.compute()["true_fn_fraction"] == out["true_fn_fraction"]
