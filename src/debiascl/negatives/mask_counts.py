"""Each step's negatives and kept negatives, and their row counts, computed once per batch.

A step with a false-negative detector needs ``neg_mask & keep`` and the row counts of it and of
``neg_mask`` in several places: the detector's threshold gradient, the rescue of rows that keep
no negative (:func:`~debiascl.negatives.detector.keep_at_least_one`), the removal statistics and
the loss. :func:`negative_counts` and :func:`kept_negatives` compute them on first use and
remember them on the :class:`~debiascl.pairs.PairwiseBatch`, for the very mask tensors they
came from (same objects, not modified in place since), so one step scans each (A, M) mask once.
The values are exactly those of ``count_true(neg_mask)`` and ``neg_mask & keep``.

SimCLR batches on the CPU (:func:`~debiascl.pairs.excluded_columns`: the negatives are every
column but the anchor's own and its positive) need no mask scan at all: the negatives count is
M - 2, and :func:`keep_at_or_below` (a threshold detector's keep-mask) gets the kept counts from
its float 0/1 comparison (sum of the row minus its two excluded entries: exact integers) and
remembers that comparison, zeroed at the excluded columns, as the float ``neg_mask & keep`` the
loss's masked exponentials read (:func:`kept_negatives_float`).
"""

from __future__ import annotations

import torch

from debiascl.batch_cache import recall, remember
from debiascl.negatives.thresholds import at_or_below_rows, count_true, ones_outside_columns
from debiascl.pairs import PairwiseBatch, excluded_columns

_NEGATIVES = "_negative_counts_cache"
_KEPT = "_kept_negatives_cache"
_KEPT_FLOAT = "_kept_negatives_float_cache"


def negative_counts(batch: PairwiseBatch) -> torch.Tensor:
    """(A,) int64 number of negatives of each anchor row: ``count_true(batch.neg_mask)``."""
    cached = recall(batch, _NEGATIVES, (batch.neg_mask,))
    if cached is not None:
        return cached
    cols = excluded_columns(batch)
    if cols is not None:  # SimCLR layout: every column but two
        a, m = batch.neg_mask.shape
        counts = torch.full((a,), m - cols.shape[1], dtype=torch.int64, device=cols.device)
    else:
        counts = count_true(batch.neg_mask)
    return remember(batch, _NEGATIVES, (batch.neg_mask,), counts)


def kept_negatives(batch: PairwiseBatch, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch.neg_mask & keep, its (A,) int64 row counts)`` for an (A, M) bool keep-mask.

    ``keep`` may be ``batch.neg_mask`` itself (every negative kept): then the negatives and
    :func:`negative_counts` are returned without a pass over the mask.
    """
    neg = batch.neg_mask
    if keep is neg:
        return neg, negative_counts(batch)
    cached = recall(batch, _KEPT, (keep, neg))
    if cached is not None:
        return cached
    kept = neg & keep
    floats = _float_cache(batch, keep)
    counts = count_true(kept) if floats is None else floats[1]
    return remember(batch, _KEPT, (keep, neg), (kept, counts))


def kept_counts(batch: PairwiseBatch, keep: torch.Tensor) -> torch.Tensor:
    """(A,) int64 row counts of ``batch.neg_mask & keep`` (:func:`kept_negatives`'s second
    value; without forming the AND when :func:`keep_at_or_below` made ``keep``)."""
    floats = _float_cache(batch, keep) if keep is not batch.neg_mask else None
    return floats[1] if floats is not None else kept_negatives(batch, keep)[1]


def kept_negatives_float(
    batch: PairwiseBatch, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neg_mask & keep`` as float32 0/1, its (A,) int64 row counts)``: the same values as
    :func:`kept_negatives`'s, converted (or remembered by :func:`keep_at_or_below`)."""
    floats = _float_cache(batch, keep) if keep is not batch.neg_mask else None
    if floats is not None:
        return floats
    kept, counts = kept_negatives(batch, keep)
    return kept.view(torch.uint8).to(torch.float32), counts  # byte view: faster than .float()


def _float_cache(
    batch: PairwiseBatch, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    return recall(batch, _KEPT_FLOAT, (keep, batch.neg_mask))


def keep_at_or_below(batch: PairwiseBatch, sim: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(A, M) bool threshold keep-mask ``sim <= lam[:, None]`` (:func:`at_or_below_rows`).

    For a CPU SimCLR batch (:func:`~debiascl.pairs.excluded_columns`) and float32 ``sim``, the
    float comparison it is cast from also gives the kept counts and the float
    ``neg_mask & keep``, remembered for :func:`kept_counts` and :func:`kept_negatives_float`.
    """
    cols = excluded_columns(batch)
    if cols is None or sim.device.type != "cpu" or sim.dtype != torch.float32:
        return at_or_below_rows(sim, lam)
    below = torch.le(sim, lam[:, None], out=torch.empty_like(sim))  # 0/1 floats
    keep = below.bool()
    counts = ones_outside_columns(below, cols).long()
    below.scatter_(1, cols, 0.0)  # = float(neg_mask & keep)
    remember(batch, _KEPT_FLOAT, (keep, batch.neg_mask), (below, counts))
    return keep
