"""A bounded, uniform sample of the pairs a false-negative detector removed during training.

For the false-negative explorer (``debiascl explore RUN_DIR``): people curating data want to see
*which* pairs the model treats as the same thing (duplicate images, repeated reports). Keeping
every removed pair is O(steps x B^2); this keeps a fixed-size uniform sample instead.

Method: priority (bottom-k) sampling. Every removed (anchor, candidate) pair gets an independent
uniform key from a seeded generator; the sample is the ``capacity`` pairs with the smallest keys
seen so far. That is a uniform sample without replacement of all removed pairs of the run, it
needs no host synchronisation per step (a masked ``topk`` on the device), and it merges exactly:
the bottom-k of a union is the bottom-k of the parts' bottom-ks. Under DDP each rank samples its
own anchors' pairs with its own key stream and :meth:`RemovedPairSample.gathered` all-gathers the
rank samples and keeps the global bottom-k, so rank 0 writes the same kind of sample a single
process would.

The file ``removed_pairs.csv`` (written atomically at every epoch end) has one row per pair:
``epoch`` (1-based, as in ``metrics.jsonl``), ``direction`` (``image``, ``image_to_text``,
``text_to_image``), ``anchor_id``, ``candidate_id`` (dataset sample ids), ``similarity``
(cosine, fp32), ``labels_agree`` (1 / 0, empty without labels) and ``key`` (the sampling
priority, kept so a resumed run continues the same sample).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from debiascl import distributed as dist_utils
from debiascl.pairs import PairwiseBatch

FILE_NAME = "removed_pairs.csv"
COLUMNS = (
    "epoch",
    "direction",
    "anchor_id",
    "candidate_id",
    "similarity",
    "labels_agree",
    "key",
)
DIRECTIONS = ("image", "image_to_text", "text_to_image")
# buffer columns (float64): key, epoch, direction code, anchor id, candidate id, similarity, agree
_WIDTH = 7


class RemovedPairSample:
    """Fixed-size uniform sample of removed (anchor, candidate) pairs.

    Args:
        capacity: the most pairs kept (>= 1).
        seed: seeds the key stream (rank r uses ``seed`` and ``r``), so a run is repeatable.
    """

    def __init__(self, capacity: int = 512, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.first_epoch: int | None = None  # first epoch (1-based) this process recorded
        self._gen: torch.Generator | None = None
        self._buf: torch.Tensor | None = None  # (<= capacity, _WIDTH) float64, keys ascending

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            # a resumed process starts a new key stream (its first epoch is part of the seed):
            # reusing the first process's keys would correlate the two parts of the sample
            first = self.first_epoch or 0
            self._gen.manual_seed((self.seed * 1_000_003 + dist_utils.rank()) * 10_007 + first)
        return self._gen

    @torch.no_grad()
    def update(self, batch: PairwiseBatch, keep: torch.Tensor, epoch: int) -> None:
        """Offer the pairs removed in one step: ``batch.neg_mask & ~keep`` ((A, M) bool).

        ``epoch`` is the 0-based training epoch (stored 1-based).
        """
        if self.first_epoch is None:  # even when nothing is removed: marks where this run began
            self.first_epoch = epoch + 1
        removed = batch.neg_mask & ~keep
        device = removed.device
        gen = self._generator(device)
        if device.type == "cpu":
            # keys for the removed pairs only (nonzero costs no device sync on the CPU)
            flat = removed.flatten().nonzero().squeeze(1)
            if flat.numel() == 0:
                return
            keys = torch.rand(flat.numel(), generator=gen)
            if self._buf is not None and len(self._buf) == self.capacity:
                enter = keys < self._buf[-1, 0]  # only keys below the current k-th can enter
                keys, flat = keys[enter], flat[enter]
                if flat.numel() == 0:
                    return
            if flat.numel() > self.capacity:
                keys, pos = keys.topk(self.capacity, largest=False)
                flat = flat[pos]
        else:
            # on an accelerator: a key for every entry and a masked topk, no host sync
            keys = torch.rand(removed.shape, generator=gen, device=device)
            keys = keys.masked_fill(~removed, math.inf).flatten()  # fp32: 4 bytes per pair
            k = min(self.capacity, keys.numel())
            if k == 0:
                return
            keys, flat = keys.topk(k, largest=False)
        top = keys.double()
        cols = batch.sim.shape[1]
        rows, cols = flat // cols, flat % cols
        sim = batch.sim.detach()[rows, cols].double()
        agree = torch.full_like(sim, math.nan)
        if batch.anchor_labels is not None and batch.candidate_labels is not None:
            agree = (batch.anchor_labels[rows] == batch.candidate_labels[cols]).double()
        code = float(DIRECTIONS.index(batch.name)) if batch.name in DIRECTIONS else -1.0
        new = torch.stack(
            [
                top,
                torch.full_like(sim, float(epoch + 1)),
                torch.full_like(sim, code),
                batch.anchor_ids[rows].double(),
                batch.candidate_ids[cols].double(),
                sim,
                agree,
            ],
            dim=1,
        )
        self._buf = _bottom_k(
            new if self._buf is None else torch.cat([self._buf, new]), self.capacity
        )

    def gathered(self) -> torch.Tensor:
        """(n, 7) float64 CPU rows of the global sample (collective under DDP: call on every rank).

        Rows whose key is infinite (no pair) are dropped; n <= capacity.
        """
        buf = self._buf
        if dist_utils.is_distributed():
            device = buf.device if buf is not None else _collective_device()
            padded = torch.full(
                (self.capacity, _WIDTH), math.inf, dtype=torch.float64, device=device
            )
            if buf is not None:
                padded[: len(buf)] = buf.to(device)
            buf = _bottom_k(dist_utils.gather_no_grad(padded), self.capacity)
        if buf is None:
            return torch.zeros(0, _WIDTH, dtype=torch.float64)
        buf = buf.cpu()
        return buf[torch.isfinite(buf[:, 0])]


def _collective_device() -> torch.device:
    import torch.distributed as dist

    backend = dist.get_backend()
    return (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )


def _bottom_k(rows: torch.Tensor, k: int) -> torch.Tensor:
    if len(rows) <= k:
        return rows[rows[:, 0].argsort(stable=True)]
    order = rows[:, 0].topk(k, largest=False).indices
    out = rows[order]
    return out[out[:, 0].argsort(stable=True)]


def rows_to_records(rows: torch.Tensor) -> list[dict[str, Any]]:
    """Buffer rows -> dicts with the :data:`COLUMNS` (labels_agree None when unknown)."""
    out = []
    for key, epoch, code, anchor, cand, sim, agree in rows.tolist():
        out.append(
            {
                "epoch": int(epoch),
                "direction": DIRECTIONS[int(code)] if 0 <= code < len(DIRECTIONS) else "unknown",
                "anchor_id": int(anchor),
                "candidate_id": int(cand),
                "similarity": float(sim),
                "labels_agree": None if math.isnan(agree) else int(agree),
                "key": float(key),
            }
        )
    return out


def read_removed_pairs(path: Path) -> list[dict[str, Any]]:
    """Records of a ``removed_pairs.csv`` (empty list when the file does not exist)."""
    if not path.is_file():
        return []
    records = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            agree = row.get("labels_agree", "")
            records.append(
                {
                    "epoch": int(row["epoch"]),
                    "direction": row["direction"],
                    "anchor_id": int(row["anchor_id"]),
                    "candidate_id": int(row["candidate_id"]),
                    "similarity": float(row["similarity"]),
                    "labels_agree": int(agree) if agree not in ("", None) else None,
                    "key": float(row.get("key") or "nan"),
                }
            )
    return records


def records_to_csv(records: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for rec in records:
        writer.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in columns})
    return buf.getvalue()
