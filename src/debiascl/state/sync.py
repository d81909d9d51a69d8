"""Cross-rank synchronisation of per-sample table rows (DESIGN 5).

Every rank updates the rows of its local anchors; :func:`all_gather_rows` gives every rank the
``(ids, rows)`` of the whole global batch in **one** collective, by reinterpreting the int64 ids'
bytes as two float32 columns next to the rows (a bit-exact round trip: collectives copy bytes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from debiascl import distributed as dist_utils


@torch.no_grad()
def all_gather_rows(ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``(ids, rows)`` from every rank (identity in a single process).

    Args:
        ids: (n,) int64 local sample ids.
        rows: (n, C) float32 local rows.

    Returns:
        ``(ids, rows)`` of shapes (world * n,) and (world * n, C), in rank order. Every rank must
        pass the same n.
    """
    if not dist_utils.is_distributed():
        return ids, rows
    n, c = rows.shape
    packed = torch.cat([ids.long().contiguous().view(torch.float32).view(n, 2), rows], dim=1)
    out = torch.empty(dist.get_world_size() * n, c + 2, dtype=packed.dtype, device=packed.device)
    dist_utils.all_gather_single(out, packed.contiguous())
    all_ids = out[:, :2].contiguous().view(torch.int64).view(-1)
    return all_ids, out[:, 2:]


@torch.no_grad()
def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns ``x``."""
    if dist_utils.is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
