"""Each step's negatives and kept negatives, and their row counts, computed once per batch.

A step with a false-negative detector needs ``neg_mask & keep`` and the row counts of it and of
``neg_mask`` in several places: the detector's threshold gradient, the rescue of rows that keep
no negative (:func:`~debiascl.negatives.detector.keep_at_least_one`), the removal statistics and
the loss. :func:`negative_counts` and :func:`kept_negatives` compute them on first use and
remember them on the :class:`~debiascl.pairs.PairwiseBatch`, for the very mask tensors they
came from (same objects, not modified in place since), so one step scans each (A, M) mask once.
The values are exactly those of ``count_true(neg_mask)`` and ``neg_mask & keep``.
"""

from __future__ import annotations

import torch

from debiascl.negatives.thresholds import count_true
from debiascl.pairs import PairwiseBatch

_NEGATIVES = "_negative_counts_cache"
_KEPT = "_kept_negatives_cache"


def _same(tensor: torch.Tensor, ref: tuple[torch.Tensor, int]) -> bool:
    """``tensor`` is the object ``ref`` remembers and was not written in place since."""
    return tensor is ref[0] and tensor._version == ref[1]


def negative_counts(batch: PairwiseBatch) -> torch.Tensor:
    """(A,) int64 number of negatives of each anchor row: ``count_true(batch.neg_mask)``."""
    cached = batch.__dict__.get(_NEGATIVES)
    if cached is not None and _same(batch.neg_mask, cached[0]):
        return cached[1]
    counts = count_true(batch.neg_mask)
    batch.__dict__[_NEGATIVES] = ((batch.neg_mask, batch.neg_mask._version), counts)
    return counts


def kept_negatives(batch: PairwiseBatch, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch.neg_mask & keep, its (A,) int64 row counts)`` for an (A, M) bool keep-mask.

    ``keep`` may be ``batch.neg_mask`` itself (every negative kept): then the negatives and
    :func:`negative_counts` are returned without a pass over the mask.
    """
    neg = batch.neg_mask
    if keep is neg:
        return neg, negative_counts(batch)
    cached = batch.__dict__.get(_KEPT)
    if cached is not None and _same(keep, cached[0]) and _same(neg, cached[1]):
        return cached[2], cached[3]
    kept = neg & keep
    counts = count_true(kept)
    batch.__dict__[_KEPT] = ((keep, keep._version), (neg, neg._version), kept, counts)
    return kept, counts
