"""Cheap per-epoch diagnostics of false-negative removal.

"True false negative" = a negative that shares the anchor's label (only when labels exist).
Per anchor: precision = |removed & same-label| / |removed|, recall = |removed & same-label| /
|same-label negatives|; both averaged over the anchors where they are defined (GloFND paper,
Balmaseda et al. 2025, Sec. 5). Rows labelled -1 (unlabelled) take part in no label-based count:
precision, recall and the true false-negative fraction count only pairs whose two labels are
known, while the removed fraction counts every pair.

Everything is a handful of reductions on masks the step already has, accumulated as sums so an
epoch costs no extra synchronisation until :meth:`compute`.
"""

from __future__ import annotations

import torch

from debiascl import distributed as dist_utils
from debiascl.negatives.mask_counts import kept_counts, negative_counts
from debiascl.negatives.thresholds import count_true
from debiascl.pairs import PairwiseBatch, excluded_columns


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
        "known_negatives",
    )

    def __init__(self) -> None:
        self.reset()

    def state(self) -> torch.Tensor:
        """Copy of the epoch's running sums on the CPU (saved in mid-epoch checkpoints)."""
        self._fold_pending()
        return self._sums.detach().cpu().clone()

    def load_state(self, sums: torch.Tensor) -> None:
        """Restore sums saved by :meth:`state`, so a resumed epoch logs the same numbers."""
        sums = sums.clone().to(torch.float64)
        if sums.shape[0] == len(self._KEYS) - 1:  # saved before known_negatives existed
            sums = torch.cat([sums, sums[1:2]])  # every negative had known labels
        self._sums = sums
        self._pending_negatives = self._pending_removed = 0

    def reset(self) -> None:
        self._sums = torch.zeros(len(self._KEYS), dtype=torch.float64)
        # negatives and removed negatives counted on the host (exact integers, folded into _sums
        # on read)
        self._pending_negatives = self._pending_removed = 0

    def _fold_pending(self) -> None:
        if self._pending_removed:
            self._sums[0] += self._pending_removed
            self._pending_removed = 0
        if self._pending_negatives:
            self._sums[1] += self._pending_negatives
            self._pending_negatives = 0

    @torch.no_grad()
    def update(self, batch: PairwiseBatch, keep: torch.Tensor, keeps_all: bool = False) -> None:
        """Add one batch: ``keep`` (A, M) bool is the detector's mask.

        ``keeps_all``: the caller knows ``keep`` is True everywhere (no detector), so nothing
        was removed and the mask need not be scanned (the same sums).

        Stays on the batch's device with no host synchronisation (the sums move to the CPU only
        in :meth:`compute`).
        """
        if keeps_all and (batch.anchor_labels is None or batch.candidate_labels is None):
            # nothing removed and no labels: only the negatives count changes
            if batch.negatives_all_but_positive or excluded_columns(batch) is not None:
                a, m = batch.neg_mask.shape
                self._pending_negatives += a * (
                    m - 1 if batch.negatives_all_but_positive else m - 2
                )
                return
            if self._sums.device != batch.neg_mask.device:
                self._sums = self._sums.to(batch.neg_mask.device)
            self._sums[1] += negative_counts(batch).sum()
            return
        unlabelled = batch.anchor_labels is None or batch.candidate_labels is None
        if unlabelled and excluded_columns(batch) is not None and keep.device.type == "cpu":
            # CPU SimCLR batch: every row has M - 2 negatives; one sum of the kept counts
            a, m = batch.neg_mask.shape
            negatives = a * (m - 2)
            self._pending_negatives += negatives
            self._pending_removed += negatives - int(kept_counts(batch, keep).sum())
            return
        # row counts shared with the rest of the step (mask_counts): the removed negatives of a
        # row are its negatives minus its kept ones
        n_negatives = negative_counts(batch)
        if keeps_all:
            n_removed = torch.zeros_like(n_negatives).double()
        else:
            n_removed = (n_negatives - kept_counts(batch, keep)).double()
        same = batch.same_label_mask()
        known = batch.known_label_mask()
        if same is None or known is None:  # the two unlabelled sums only
            if self._sums.device != n_removed.device:
                self._sums = self._sums.to(n_removed.device)
            self._sums[:2] += torch.stack([n_removed.sum(), n_negatives.sum().double()])
            return
        removed = None if keeps_all else batch.neg_mask & ~keep
        parts = [n_removed.sum(), n_negatives.sum().double()]
        n_same = count_true(same).double()
        if removed is None:
            hits = n_removed_known = n_removed
        else:
            hits = count_true(removed & same).double()
            n_removed_known = count_true(removed & known).double()
        parts += [
            (hits / n_removed_known.clamp_min(1)).sum(),  # rows with nothing removed add 0
            (n_removed_known > 0).sum().double(),
            (hits / n_same.clamp_min(1)).sum(),
            (n_same > 0).sum().double(),
            n_same.sum(),
            hits.sum(),
            count_true(known).sum().double(),
        ]
        if self._sums.device != n_removed.device:
            self._sums = self._sums.to(n_removed.device)
        self._sums += torch.stack(parts)

    def compute(self) -> dict[str, float]:
        """Reduce over ranks and return removed_fraction and, with labels, precision/recall/F1."""
        self._fold_pending()
        s = dist_utils.all_reduce_sum(self._sums).cpu()
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
                true_fn_fraction=float(s[6] / s[8]),
            )
        return out
