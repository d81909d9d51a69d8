"""Values remembered on an object for the very tensors they were computed from.

A step computes some things about its :class:`~debiascl.pairs.PairwiseBatch` once (the SimCLR
layout's excluded columns, the anchor groups, the negatives' row counts) and several components
read them. :func:`remember` stores such a value in the object's ``__dict__`` under a key together
with the tensors it depends on; :func:`recall` returns it only while every one of those tensors is
still the same object and has not been written in place since (its ``_version`` is unchanged).
A new tensor object or an in-place write makes the value stale and :func:`recall` return None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def remember(holder: Any, key: str, tensors: Sequence[torch.Tensor], value: Any) -> Any:
    """Store ``value`` on ``holder`` under ``key``, valid for ``tensors`` as they are now.

    Returns ``value``. ``holder`` needs a ``__dict__`` (a dataclass instance does).
    """
    holder.__dict__[key] = (tuple((t, t._version) for t in tensors), value)
    return value


def recall(holder: Any, key: str, tensors: Sequence[torch.Tensor]) -> Any:
    """The value :func:`remember` stored on ``holder`` under ``key``, or None when there is none
    or any of ``tensors`` is not the object remembered at that position or was written in place
    since (the same number of tensors, in the same order, as given to :func:`remember`)."""
    entry = holder.__dict__.get(key)
    if entry is None:
        return None
    refs, value = entry
    if len(refs) != len(tensors):
        return None
    for tensor, (ref, version) in zip(tensors, refs, strict=True):
        if tensor is not ref or tensor._version != version:
            return None
    return value
