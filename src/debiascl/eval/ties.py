"""Ranking metrics under ties: the expected value over a uniformly random order of tied items.

Every ranking metric of :mod:`debiascl.eval` (retrieval Recall@K, kNN neighbour selection and
voting, zero-shot and kNN top-1/top-5 accuracy) uses this one rule. Items with exactly equal scores
are ordered uniformly at random, and the metric is its expectation over that order; nothing is
drawn, the expectation is computed exactly. Ties therefore never favour the ground truth: a
collapsed encoder, whose scores are all equal, gets what chance gives (R@K = K / N for N
candidates with one correct each), not a perfect score. Without ties the rule is the usual one.

For a query whose best correct item has score s, let ``better`` be the number of incorrect items
scoring strictly above s, ``tied`` the incorrect items scoring exactly s and ``tied_correct`` (>= 1)
the correct items scoring exactly s. The first correct item's 0-based rank is ``better`` plus the
number of tied incorrect items placed before every tied correct one, so

    P(hit within K) = 1 - prod_{i < K - better} (tied - i) / (tied + tied_correct - i)

(0 when K <= better, 1 when K > better + tied), and the expected rank is
``better + tied / (tied_correct + 1)``.

Decisions follow the same rule. Counted in a metric, an argmax decision is its expectation (the m
tied top classes get 1/m each, :func:`debiascl.numerics.argmax_share`: fairness rates with
``threshold="argmax"``, the leakage probe, the adversary's accuracy). Where one label must be
returned (:func:`debiascl.eval.knn.knn_predict`), :func:`random_tie_argmax` draws one of the tied
classes uniformly with a seeded generator, so no class index is preferred and runs repeat.
"""

from __future__ import annotations

import torch


def hit_probability(
    better: torch.Tensor, tied: torch.Tensor, tied_correct: torch.Tensor, k: int
) -> torch.Tensor:
    """(Q,) float64 probability that a correct item is among the top ``k`` (random tie order).

    Args:
        better: (Q,) incorrect items scoring strictly above the best correct one.
        tied: (Q,) incorrect items scoring exactly as the best correct one.
        tied_correct: (Q,) correct items scoring exactly that (>= 1).
        k: the cut-off K >= 1.
    """
    better, tied, c = better.long(), tied.long(), tied_correct.long().clamp_min(1)
    slots = k - better  # places left for the tie group inside the top k
    miss = torch.ones(better.shape, dtype=torch.float64, device=better.device)
    for i in range(int(min(k, int(tied.max()) + 1 if tied.numel() else 0))):
        # factor (tied - i) / (tied + c - i) for the rows that still have i < slots <= tied
        active = (i < slots) & (slots <= tied)
        frac = (tied - i).double() / (tied + c - i).double()
        miss = torch.where(active, miss * frac, miss)
    prob = 1.0 - miss
    prob = torch.where(slots <= 0, torch.zeros_like(prob), prob)
    return torch.where(slots > tied, torch.ones_like(prob), prob)


def expected_rank(
    better: torch.Tensor, tied: torch.Tensor, tied_correct: torch.Tensor
) -> torch.Tensor:
    """(Q,) float64 expected 0-based rank of the first correct item (random tie order)."""
    return better.double() + tied.double() / (tied_correct.double().clamp_min(1.0) + 1.0)


def class_hit_rate(scores: torch.Tensor, target: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(N,) float64 chance that the true class is in the top ``k`` of its score row.

    Args:
        scores: (N, C) class scores.
        target: (N,) int64 true class per row.
        k: top-k cut-off (1 = top-1 accuracy).

    Ties between the true class and others count fractionally (the expected hit over a random
    order of the tied classes); ``mean()`` of the result is the top-k accuracy.
    """
    own = scores.gather(1, target[:, None])
    better = (scores > own).sum(1)
    tied = (scores == own).sum(1) - 1
    return hit_probability(better, tied, torch.ones_like(tied), k)


def tie_aware_topk_weights(sim: torch.Tensor, k: int) -> torch.Tensor:
    """(R, N) expected membership of each column in the row's top ``k`` (random tie order).

    Columns scoring strictly above the k-th largest value are in (1.0); the m columns equal to it
    share the r remaining places (r / m each); the rest are out (0.0). Each row sums to k.
    """
    kth = sim.topk(k, dim=1).values[:, -1:]
    above = sim > kth
    at = sim == kth
    share = (k - above.sum(1, keepdim=True)).to(sim.dtype) / at.sum(1, keepdim=True).to(sim.dtype)
    return above.to(sim.dtype) + at.to(sim.dtype) * share


def random_tie_argmax(scores: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N,) int64 argmax of each (N, C) score row; tied maxima are broken uniformly at random.

    The draw uses a ``torch.Generator`` seeded with ``seed`` (on the CPU), so the same scores and
    seed give the same labels on every device. Rows without a tie get their unique argmax.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(scores.shape, generator=gen, dtype=torch.float64).to(scores.device)
    top = scores == scores.max(dim=1, keepdim=True).values
    return torch.where(top, noise, torch.full_like(noise, -1.0)).argmax(dim=1)
