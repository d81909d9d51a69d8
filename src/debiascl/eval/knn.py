"""Weighted k-nearest-neighbour classification on frozen features.

Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018,
Sec. 3.4: with L2-normalised features, take the k training samples of highest cosine similarity
s_i to the query, weight each by exp(s_i / t), and predict the class with the largest summed
weight. This is the kNN monitor used by SimCLR/MoCo-style papers (k=200, t=0.1).
"""

from __future__ import annotations

from typing import Literal

import torch

from debiascl.errors import ConfigError, DataError, check
from debiascl.eval._arrays import ArrayLike, float_matrix, label_vector, rows_per_chunk, same_width
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
) -> torch.Tensor:
    """Per-class vote of the k nearest training samples for every test row.

    Args:
        train_x: (N, D) training (memory bank) features; normalised here.
        train_y: (N,) int64 labels in [0, C).
        test_x: (M, D) query features; normalised here.
        k: neighbours per query (clamped to N).
        temperature: t in exp(s / t); smaller t concentrates the vote on the closest samples.
        num_classes: C (default: max label + 1).
        weighting: ``"exp"`` (Wu et al.) or ``"uniform"`` (plain majority vote, the t -> inf
            limit, matching scikit-learn's ``KNeighborsClassifier(weights="uniform")``).
        max_elements: bound on the entries of one (rows, N) similarity block; test rows are
            processed in chunks so memory stays O(max_elements) whatever M is.

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
    k = min(k, bank.shape[0])

    scores = torch.zeros(queries.shape[0], n_classes, dtype=dtype, device=bank.device)
    step = rows_per_chunk(bank.shape[0], max_elements)
    for start in range(0, queries.shape[0], step):
        sim = queries[start : start + step] @ bank.T  # (r, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)
        if weighting == "exp":
            # exp((s - s_max) / t) per query row: the row constant cancels in the vote and keeps
            # the largest weight at 1, so no temperature can overflow or underflow every weight.
            weights = torch.exp((top_sim - top_sim[:, :1]) / temperature)
        else:
            weights = torch.ones_like(top_sim)
        scores[start : start + step].scatter_add_(1, labels[top_idx], weights)
    return scores


def knn_predict(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    k: int = 200,
    temperature: float = 0.1,
    **kwargs,
) -> torch.Tensor:
    """(M,) int64 predicted class: argmax of :func:`knn_scores` (ties go to the lower class)."""
    return knn_scores(train_x, train_y, test_x, k, temperature, **kwargs).argmax(dim=1)


def knn_eval(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    k: int = 200,
    temperature: float = 0.1,
    **kwargs,
) -> dict[str, float]:
    """Weighted kNN accuracy: ``{"accuracy": top-1 in [0, 1], "top5": top-5 (C >= 5 only)}``."""
    scores = knn_scores(train_x, train_y, test_x, k, temperature, **kwargs)
    target = label_vector(test_y, "test_y", scores.shape[0], scores.device)
    check(
        int(target.max()) < scores.shape[1],
        f"test_y contains label {int(target.max())} but the training labels only reach "
        f"{scores.shape[1] - 1}; pass num_classes",
        DataError,
    )
    out = {"accuracy": float((scores.argmax(dim=1) == target).double().mean())}
    if scores.shape[1] >= 5:
        top5 = scores.topk(5, dim=1).indices
        out["top5"] = float((top5 == target[:, None]).any(dim=1).double().mean())
    return out
