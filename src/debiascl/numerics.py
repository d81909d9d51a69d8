"""Small numerical building blocks shared by the losses, the evaluation and the fairness code.

``unit_rows``: L2 normalisation in float32 or better. ``F.normalize`` divides by
``max(||x||, eps)`` with eps = 1e-12, which is 0 in float16: a zero row of a half-precision
embedding then becomes 0 / 0 = NaN, and every loss or metric that reads it is NaN. Upcasting
first keeps a zero row at zero (its cosine with everything is 0) and avoids fp16's overflow of
||x||^2 above 65504.

``argmax_share``: the library's tie rule for argmax decisions counted in a metric (see
:mod:`debiascl.eval.ties`): the expected one-hot decision when tied maxima are ordered at random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16, bfloat16 and integer dtypes become float32."""
    if not dtype.is_floating_point:
        return torch.float32
    return torch.promote_types(dtype, torch.float32)


def unit_rows(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / max(||x||, 1e-12)`` along ``dim``, computed and returned in float32 or better.

    Args:
        x: (..., D) embeddings of any floating (or integer) dtype.
        dim: the dimension to normalise.

    Returns:
        Same shape, dtype float32 (float64 inputs stay float64). A zero row stays zero.
    """
    return F.normalize(x.to(at_least_float32(x.dtype)), dim=dim)


def argmax_share(scores: torch.Tensor) -> torch.Tensor:
    """(N, C) float64 expected one-hot argmax of each (N, C) score row under random tie order.

    The m columns equal to the row maximum get 1/m each, the rest 0; every row sums to 1. A
    metric that averages argmax hits (accuracy, positive rates) computed on this share is its
    exact expectation over a uniformly random tie-break, so ties never favour a class index.
    """
    top = (scores == scores.max(dim=1, keepdim=True).values).double()
    return top / top.sum(dim=1, keepdim=True)
