"""Cheap per-epoch diagnostics of false-negative removal.

"True false negative" = a negative that shares the anchor's label (only when labels exist).
Per anchor: precision = |removed & same-label| / |removed|, recall = |removed & same-label| /
|same-label negatives|; both averaged over the anchors where they are defined (GloFND paper,
Balmaseda et al. 2025, Sec. 5). Everything is a handful of reductions on masks the step already
has, accumulated as sums so an epoch costs no extra synchronisation until :meth:`compute`.
"""

from __future__ import annotations

import torch

from debiascl import distributed as dist_utils
from debiascl.pairs import PairwiseBatch


class DetectionStats:
    """Accumulates removal and detection-quality sums over an epoch."""

    _KEYS = (
        "removed",
        "negatives",
        "precision_sum",
        "precision_n",
        "recall_sum",
        "recall_n",
        "true_fn",
        "true_fn_removed",
    )

    def __init__(self) -> None:
        self.reset()

    def state(self) -> torch.Tensor:
        """Copy of the epoch's running sums (saved in mid-epoch checkpoints)."""
        return self._sums.clone()

    def load_state(self, sums: torch.Tensor) -> None:
        """Restore sums saved by :meth:`state`, so a resumed epoch logs the same numbers."""
        self._sums = sums.clone().to(torch.float64)

    def reset(self) -> None:
        self._sums = torch.zeros(len(self._KEYS), dtype=torch.float64)

    @torch.no_grad()
    def update(self, batch: PairwiseBatch, keep: torch.Tensor) -> None:
        """Add one batch: ``keep`` (A, M) bool is the detector's mask."""
        removed = batch.neg_mask & ~keep
        n_removed = removed.sum(1)
        values = torch.zeros(len(self._KEYS), dtype=torch.float64)
        values[0] = float(n_removed.sum())
        values[1] = float(batch.neg_mask.sum())
        same = batch.same_label_mask()
        if same is not None:
            hits = (removed & same).sum(1).double()
            n_same = same.sum(1)
            has_removed = n_removed > 0
            has_same = n_same > 0
            values[2] = float((hits[has_removed] / n_removed[has_removed]).sum())
            values[3] = float(has_removed.sum())
            values[4] = float((hits[has_same] / n_same[has_same]).sum())
            values[5] = float(has_same.sum())
            values[6] = float(n_same.sum())
            values[7] = float(hits.sum())
        self._sums += values

    def compute(self) -> dict[str, float]:
        """Reduce over ranks and return removed_fraction and, with labels, precision/recall/F1."""
        s = dist_utils.all_reduce_sum(self._sums)
        out = {"removed_fraction": float(s[0] / s[1]) if s[1] > 0 else 0.0}
        if s[5] > 0:
            precision = float(s[2] / s[3]) if s[3] > 0 else float("nan")
            recall = float(s[4] / s[5])
            f1 = (
                2 * precision * recall / (precision + recall)
                if precision + recall > 0
                else float("nan")
            )
            out.update(
                precision=precision,
                recall=recall,
                f1=f1,
                true_fn_fraction=float(s[6] / s[1]),
            )
        return out
