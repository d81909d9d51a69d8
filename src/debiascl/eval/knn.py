"""Weighted k-nearest-neighbour classification on frozen features.

Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018,
Sec. 3.4: with L2-normalised features, take the k training samples of highest cosine similarity
s_i to the query, weight each by exp(s_i / t), and predict the class with the largest summed
weight. This is the kNN monitor used by SimCLR/MoCo-style papers (k=200, t=0.1).

Two departures from a plain ``topk``, both so a result never depends on arbitrary choices:

* k is capped at the number of training samples of the smallest class (with a warning): with
  k = 200 and classes of ~130 images, every vote is dominated by other classes' samples (47%
  against 64% at k = 20 on a 10-class manifest). :func:`knn_eval` reports the k it used.
* Ties (the library's rule, :mod:`debiascl.eval.ties`): training samples tied at the k-th
  similarity share the remaining neighbour places equally (the expected vote under a random
  order of the tie), and a true class tied with c others at the top of the vote counts
  1 / (c + 1) in the accuracy. A collapsed encoder therefore scores what the class frequencies
  give, not a lucky tie-break.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

from debiascl.errors import ConfigError, DataError, check
from debiascl.eval._arrays import (
    ArrayLike,
    float_matrix,
    label_vector,
    rows_per_chunk,
    same_width,
)
from debiascl.eval.ties import class_hit_rate, random_tie_argmax, tie_aware_topk_weights
from debiascl.numerics import unit_rows


def knn_scores(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    weighting: Literal["exp", "uniform"] = "exp",
    max_elements: int = 1 << 24,
    cap_k: bool = True,
) -> torch.Tensor:
    """Per-class vote of the k nearest training samples for every test row.

    Args:
        train_x: (N, D) training (memory bank) features; normalised here.
        train_y: (N,) int64 labels in [0, C).
        test_x: (M, D) query features; normalised here.
        k: neighbours per query (at most N).
        temperature: t in exp(s / t); smaller t concentrates the vote on the closest samples.
        num_classes: C (default: max label + 1).
        weighting: ``"exp"`` (Wu et al.) or ``"uniform"`` (plain majority vote, the t -> inf
            limit, matching scikit-learn's ``KNeighborsClassifier(weights="uniform")``).
        max_elements: bound on the entries of one (rows, N) similarity block; test rows are
            processed in chunks so memory stays O(max_elements) whatever M is.
        cap_k: lower k to the smallest class's training count, with a warning (see
            :func:`effective_k`); False keeps min(k, N).

    Returns:
        (M, C) summed neighbour weights (float, on the features' device), each row scaled by
        exp(-s_max / t) for numerical range (this does not change the vote). Float64 inputs are
        computed in float64, everything else in float32.
    """
    check(k >= 1, f"k must be >= 1, got {k}", ConfigError)
    check(temperature > 0, f"temperature must be > 0, got {temperature}", ConfigError)
    check(
        weighting in ("exp", "uniform"),
        f"weighting must be 'exp' or 'uniform', got {weighting!r}",
        ConfigError,
    )
    bank = float_matrix(train_x, "train_x")
    queries = float_matrix(test_x, "test_x", bank.device)
    same_width(bank, queries, "train_x", "test_x")
    dtype = torch.float64 if torch.float64 in (bank.dtype, queries.dtype) else torch.float32
    bank = unit_rows(bank.to(dtype), dim=1)
    queries = unit_rows(queries.to(dtype), dim=1)
    labels = label_vector(train_y, "train_y", bank.shape[0], bank.device)
    n_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    check(
        n_classes > int(labels.max()),
        f"num_classes={num_classes} but train_y contains label {int(labels.max())}",
        DataError,
    )
    k = effective_k(k, labels, warn=True) if cap_k else min(k, bank.shape[0])

    scores = torch.zeros(queries.shape[0], n_classes, dtype=dtype, device=bank.device)
    step = rows_per_chunk(bank.shape[0], max_elements)
    index = labels[None, :]
    for start in range(0, queries.shape[0], step):
        sim = queries[start : start + step] @ bank.T  # (r, N) cosine similarities
        member = tie_aware_topk_weights(sim, k)  # 1 inside the top k, a share at a tie, else 0
        if weighting == "exp":
            # exp((s - s_max) / t) per query row: the row constant cancels in the vote and keeps
            # the largest weight at 1, so no temperature can overflow or underflow every weight.
            top = sim.max(dim=1, keepdim=True).values
            weights = member * torch.exp((sim - top) / temperature)
        else:
            weights = member
        scores[start : start + step].scatter_add_(1, index.expand_as(sim), weights)
    return scores


def effective_k(k: int, train_y: torch.Tensor, warn: bool = False) -> int:
    """The k the kNN vote uses: ``min(k, N, smallest class count)``.

    Args:
        k: requested neighbours.
        train_y: (N,) int64 training labels.
        warn: emit a ``UserWarning`` when k is lowered below min(k, N).

    A k larger than a class's training count lets every query of that class be outvoted by the
    other classes' samples, so k is capped there (classes absent from ``train_y`` do not count).
    """
    counts = torch.bincount(train_y)
    smallest = int(counts[counts > 0].min())
    used = min(k, train_y.shape[0], smallest)
    if warn and used < min(k, train_y.shape[0]):
        warnings.warn(
            f"kNN k={k} exceeds the smallest class's {smallest} training samples; using k={used} "
            "(pass a smaller k to silence this)",
            stacklevel=3,
        )
    return used


def knn_predict(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    k: int = 200,
    temperature: float = 0.1,
    *,
    seed: int = 0,
    **kwargs,
) -> torch.Tensor:
    """(M,) int64 predicted class: argmax of :func:`knn_scores`.

    A prediction must pick one class: an exact tie of votes goes to one of the tied classes drawn
    uniformly with a generator seeded by ``seed`` (:func:`debiascl.eval.ties.random_tie_argmax`),
    never systematically to the lower index. :func:`knn_eval` counts such a tie by its expected hit.
    """
    scores = knn_scores(train_x, train_y, test_x, k, temperature, **kwargs)
    return random_tie_argmax(scores, seed)


def knn_eval(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    k: int = 200,
    temperature: float = 0.1,
    **kwargs,
) -> dict[str, float]:
    """Weighted kNN accuracy.

    Returns:
        ``{"accuracy": top-1 in [0, 1], "top5": top-5 (C >= 5 only), "k": the k used}``; ties in
        the vote count by their expected hit (see the module docstring).
    """
    n_train = len(train_y)
    y_train = label_vector(train_y, "train_y", n_train)
    k_used = effective_k(k, y_train) if kwargs.get("cap_k", True) else min(k, n_train)
    scores = knn_scores(train_x, train_y, test_x, k, temperature, **kwargs)
    target = label_vector(test_y, "test_y", scores.shape[0], scores.device)
    check(
        int(target.max()) < scores.shape[1],
        f"test_y contains label {int(target.max())} but the training labels only reach "
        f"{scores.shape[1] - 1}; pass num_classes",
        DataError,
    )
    out: dict[str, float] = {"accuracy": float(class_hit_rate(scores, target, 1).mean())}
    if scores.shape[1] >= 5:
        out["top5"] = float(class_hit_rate(scores, target, 5).mean())
    out["k"] = k_used
    return out
