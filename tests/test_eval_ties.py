"""Ties in ranking metrics never favour the ground truth (issue 10, items 10 and 20).

The rule (``debiascl.eval.ties``): tied items are ordered uniformly at random and a metric is its
exact expectation over that order. The references below enumerate every tie-consistent order (or
every way to fill the tied neighbour places) in float64 and average, which is the definition of
the rule, independent of the closed forms used by the library.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from debiascl.eval import (
    hit_probability,
    knn_eval,
    knn_scores,
    retrieval_eval,
    retrieval_ranks,
    zero_shot_accuracy,
)


def cosine64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def tie_orders(scores: np.ndarray):
    """Every ordering of the indices by descending score, tied indices in every order."""
    values = sorted(set(scores.tolist()), reverse=True)
    groups = [[j for j, s in enumerate(scores) if s == v] for v in values]
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield [j for p in perms for j in p]


def brute_recall(sim: np.ndarray, qid, cid, k: int) -> float:
    """Mean over queries of the fraction of tie orders with a correct candidate in the top k."""
    per_query = []
    for i, row in enumerate(sim):
        hits = [any(cid[j] == qid[i] for j in order[:k]) for order in tie_orders(row)]
        per_query.append(np.mean(hits))
    return float(np.mean(per_query))


def test_collapsed_encoder_gets_chance_recall():
    out = retrieval_eval(torch.ones(100, 8), torch.ones(100, 8))
    for direction in ("image_to_text", "text_to_image"):
        assert out[direction] == pytest.approx({"R@1": 0.01, "R@5": 0.05, "R@10": 0.10})
    # expected rank of the match among 100 tied candidates: 99 / 2
    assert retrieval_ranks(torch.ones(100, 8), torch.ones(100, 8)).tolist() == [49.5] * 100


@pytest.mark.parametrize("grouped", [False, True])
def test_recall_with_ties_matches_enumeration(grouped):
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((3, 4))  # 7 embeddings from 3 distinct vectors: many exact ties
    img = atoms[[0, 0, 1, 2, 1, 0, 2]]
    txt = atoms[[0, 1, 1, 2, 0, 0, 1]]
    ids = np.array([0, 0, 1, 2, 3, 3, 4]) if grouped else np.arange(7)
    sim = cosine64(img, txt)
    kwargs = {"image_ids": ids, "text_ids": ids} if grouped else {}
    out = retrieval_eval(img, txt, ks=(1, 2, 3, 5), **kwargs)
    for k in (1, 2, 3, 5):
        assert out["image_to_text"][f"R@{k}"] == pytest.approx(brute_recall(sim, ids, ids, k))
        assert out["text_to_image"][f"R@{k}"] == pytest.approx(brute_recall(sim.T, ids, ids, k))


def test_hit_probability_several_correct_in_a_tie():
    # 2 correct and 3 incorrect items all tied, 1 incorrect item above: R@2 = P(first of the
    # 5 tied is correct) = 2/5; R@3 = 1 - P(first two tied incorrect) = 1 - 3/5 * 2/4
    p = [hit_probability(*(torch.tensor([v]) for v in (1, 3, 2)), k).item() for k in (1, 2, 3, 5)]
    assert p == pytest.approx([0.0, 2 / 5, 1 - 3 / 5 * 2 / 4, 1.0])


def test_zero_shot_accuracy_counts_ties_by_expectation():
    scores = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [0.0, 3.0, 1.0], [5.0, 1.0, 1.0]])
    labels = torch.tensor([1, 2, 1, 1])
    rows = zip(scores.numpy(), labels.tolist(), strict=True)
    ref = np.mean([np.mean([o[0] == y for o in tie_orders(r)]) for r, y in rows])
    assert zero_shot_accuracy(scores, labels) == pytest.approx(ref)
    assert ref == pytest.approx((1 / 2 + 1 / 3 + 1 + 0) / 4)


def brute_knn_votes(train_x, train_y, test_x, k, t, n_classes):
    """Votes averaged over every way to fill the neighbour places left at a tie (float64)."""
    sim = cosine64(test_x, train_x)
    out = np.zeros((len(test_x), n_classes))
    for i, row in enumerate(sim):
        kth = np.sort(row)[::-1][k - 1]
        above = [j for j in range(len(row)) if row[j] > kth]
        tied = [j for j in range(len(row)) if row[j] == kth]
        fills = list(itertools.combinations(tied, k - len(above)))
        for chosen in fills:
            for j in above + list(chosen):
                out[i, train_y[j]] += math.exp((row[j] - row.max()) / t) / len(fills)
    return out


def test_knn_neighbour_ties_share_the_places():
    rng = np.random.default_rng(1)
    atoms = rng.standard_normal((3, 5))
    train_x = atoms[rng.integers(0, 3, 15)]  # duplicated training points: tied similarities
    train_y = np.array([0, 1, 2] * 5)
    test_x = np.vstack([atoms, rng.standard_normal((2, 5))])
    ours = knn_scores(train_x, train_y, test_x, k=4, temperature=0.5, cap_k=False).numpy()
    ref = brute_knn_votes(train_x, train_y, test_x, 4, 0.5, 3)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_collapsed_encoder_knn_is_chance():
    train_y = np.array([0] * 6 + [1] * 6 + [2] * 6)
    test_y = np.array([0, 1, 2, 2])
    out = knn_eval(np.ones((18, 4)), train_y, np.ones((4, 4)), test_y, k=5)
    # every training sample is a neighbour with weight 5/18; the three classes tie: 1/3 each
    assert out["accuracy"] == pytest.approx(1 / 3)


def test_knn_caps_k_at_the_smallest_class_and_reports_it():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((3, 6)) * 2
    train_y = np.array([0] * 4 + [1] * 30 + [2] * 30)
    test_y = np.repeat(np.arange(3), 10)
    train_x = centres[train_y] + rng.standard_normal((64, 6))
    test_x = centres[test_y] + rng.standard_normal((30, 6))
    with pytest.warns(UserWarning, match="k=4"):
        out = knn_eval(train_x, train_y, test_x, test_y, k=200, temperature=0.1)
    assert out["k"] == 4
    ref = brute_knn_votes(train_x, train_y, test_x, 4, 0.1, 3)
    assert out["accuracy"] == pytest.approx(np.mean(ref.argmax(1) == test_y))
    uncapped = knn_eval(train_x, train_y, test_x, test_y, k=200, cap_k=False)
    assert uncapped["k"] == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k within every class: no warning
        assert knn_eval(train_x, train_y, test_x, test_y, k=3)["k"] == 3


def test_zero_shot_audit_accuracy_counts_ties_by_expectation():
    from debiascl.eval.fairness_audit import zero_shot_audit

    rng = np.random.default_rng(5)
    emb = rng.standard_normal((30, 4))
    y = np.array([0] * 16 + [1] * 8 + [2] * 6)  # argmax -> class 0 would score 16/30
    attrs = {"g": np.array(["a", "b"] * 15, dtype=object)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # groups without an AUC under constant scores
        out = zero_shot_audit(emb, y, emb, y, attrs, np.ones((3, 4)), decision="argmax")
    assert out["accuracy"] == pytest.approx(
        1 / 3
    )  # a collapsed text tower: chance, not 1/3 by luck
