"""Image-text retrieval Recall@K on paired embeddings.

Row i of the image embeddings and row i of the text embeddings are a ground-truth pair (the
standard CLIP retrieval protocol, Radford et al. 2021, Sec. 3.1). Recall@K is the fraction of
queries whose ground truth is among the K most cosine-similar candidates. Optional group ids
generalise this to several correct candidates per query (e.g. 5 captions per image, or identical
template captions): any candidate with the query's id counts.

Ties: candidates with exactly equal scores are ordered uniformly at random and Recall@K is the
exact expectation over that order (:mod:`debiascl.eval.ties`, the rule of every ranking metric
here). A tie never favours the ground truth: a collapsed encoder (all embeddings equal) gets
R@K = K / N, chance, not 1. Duplicated captions that should all count as correct need group ids
(:func:`caption_group_ids`), not ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from debiascl.errors import ConfigError, DataError, check
from debiascl.eval._arrays import ArrayLike, as_tensor, float_matrix, rows_per_chunk, same_width
from debiascl.eval.ties import expected_rank, hit_probability
from debiascl.numerics import unit_rows


class RankCounts(NamedTuple):
    """Per query (Q,) int64 counts around its best correct candidate (see :mod:`.ties`)."""

    better: torch.Tensor  # incorrect candidates scoring strictly higher
    tied: torch.Tensor  # incorrect candidates scoring exactly the same
    tied_correct: torch.Tensor  # correct candidates scoring exactly the same (>= 1)


def retrieval_ranks(
    queries: ArrayLike,
    candidates: ArrayLike,
    query_ids: ArrayLike | None = None,
    candidate_ids: ArrayLike | None = None,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """(Q,) float64 expected zero-based rank of each query's first correct candidate (0 = top).

    Equal to the plain integer rank when nothing ties; with ties, the expectation over a random
    order of the tied candidates. Arguments as in :func:`retrieval_rank_counts`.
    """
    return expected_rank(
        *retrieval_rank_counts(queries, candidates, query_ids, candidate_ids, max_elements)
    )


def retrieval_rank_counts(
    queries: ArrayLike,
    candidates: ArrayLike,
    query_ids: ArrayLike | None = None,
    candidate_ids: ArrayLike | None = None,
    max_elements: int = 1 << 24,
) -> RankCounts:
    """Counts that fix each query's rank distribution under random tie order.

    Args:
        queries: (Q, D) query embeddings; normalised here.
        candidates: (M, D) candidate embeddings; normalised here.
        query_ids, candidate_ids: (Q,) and (M,) integer group ids; candidate j is correct for
            query i when their ids are equal. Default: ``arange`` (pair i <-> i, needs Q == M).
        max_elements: bound on one (rows, M) similarity block; queries go in chunks.
    """
    q = float_matrix(queries, "queries")
    c = float_matrix(candidates, "candidates", q.device)
    same_width(q, c, "queries", "candidates")
    dtype = torch.float64 if torch.float64 in (q.dtype, c.dtype) else torch.float32
    q = unit_rows(q.to(dtype), dim=1)
    c = unit_rows(c.to(dtype), dim=1)
    if query_ids is None and candidate_ids is None:
        check(
            q.shape[0] == c.shape[0],
            f"paired retrieval needs as many queries as candidates, got {q.shape[0]} and "
            f"{c.shape[0]}; pass query_ids/candidate_ids for unpaired sets",
            DataError,
        )
        qid = cid = torch.arange(q.shape[0], device=q.device)
    else:
        check(
            query_ids is not None and candidate_ids is not None,
            "pass both query_ids and candidate_ids, or neither",
            DataError,
        )
        qid = as_tensor(query_ids, "query_ids", q.device).reshape(-1).long()
        cid = as_tensor(candidate_ids, "candidate_ids", q.device).reshape(-1).long()
        check(
            qid.shape[0] == q.shape[0] and cid.shape[0] == c.shape[0],
            f"ids must match the rows: {qid.shape[0]} query ids for {q.shape[0]} queries, "
            f"{cid.shape[0]} candidate ids for {c.shape[0]} candidates",
            DataError,
        )
    counts = [torch.empty(q.shape[0], dtype=torch.long, device=q.device) for _ in range(3)]
    step = rows_per_chunk(c.shape[0], max_elements)
    for start in range(0, q.shape[0], step):
        sim = q[start : start + step] @ c.T  # (r, M)
        correct = qid[start : start + step, None] == cid[None, :]
        check(
            bool(correct.any(dim=1).all()),
            "some queries have no correct candidate (no candidate shares their id); "
            "check query_ids and candidate_ids",
            DataError,
        )
        best = sim.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
        rows = slice(start, start + step)
        counts[0][rows] = ((sim > best) & ~correct).sum(dim=1)
        counts[1][rows] = ((sim == best) & ~correct).sum(dim=1)
        counts[2][rows] = ((sim == best) & correct).sum(dim=1)
    return RankCounts(*counts)


def caption_group_ids(texts: Sequence[str]) -> torch.Tensor:
    """(N,) int64 id per distinct string, in order of first appearance.

    Pass as both ``image_ids`` and ``text_ids`` to :func:`retrieval_eval` when captions repeat
    (template captions, "No acute cardiopulmonary process"): every image whose caption is the
    query text then counts as a correct text->image hit, instead of only the one it was paired
    with.
    """
    groups: dict[str, int] = {}
    return torch.tensor([groups.setdefault(t, len(groups)) for t in texts], dtype=torch.long)


def recall_at_k(
    ranks: torch.Tensor | RankCounts, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """``{"R@k": ...}`` for each k.

    ``ranks``: a :class:`RankCounts` (from :func:`retrieval_rank_counts`; ties count by their
    expected hit, the library's rule), or (Q,) tie-free 0-based ranks (fraction of ranks < k).
    """
    for k in ks:
        check(k >= 1, f"recall cut-offs must be >= 1, got {k}", ConfigError)
    if isinstance(ranks, RankCounts):
        return {f"R@{k}": float(hit_probability(*ranks, k).mean()) for k in ks}
    return {f"R@{k}": float((ranks < k).double().mean()) for k in ks}


def retrieval_eval(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    image_ids: ArrayLike | None = None,
    text_ids: ArrayLike | None = None,
    max_elements: int = 1 << 24,
) -> dict[str, dict[str, float]]:
    """Image->text and text->image Recall@K.

    Args:
        image_emb: (N, D) image embeddings.
        text_emb: (M, D) text embeddings (M == N with row-wise pairs by default).
        ks: recall cut-offs.
        image_ids, text_ids: optional group ids (see :func:`retrieval_ranks`).

    Returns:
        ``{"image_to_text": {"R@1", "R@5", "R@10"}, "text_to_image": {...}}``, values in [0, 1];
        exact ties count by their expected hit (see the module docstring).
    """
    i2t = retrieval_rank_counts(image_emb, text_emb, image_ids, text_ids, max_elements)
    t2i = retrieval_rank_counts(text_emb, image_emb, text_ids, image_ids, max_elements)
    return {"image_to_text": recall_at_k(i2t, ks), "text_to_image": recall_at_k(t2i, ks)}
