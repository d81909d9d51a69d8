"""Training side of the false-negative explorer: give the objective a removed-pair sample and
write it to ``removed_pairs.csv`` at every epoch end (see :mod:`debiascl.negatives.removed_pairs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from debiascl import distributed as dist_utils
from debiascl.negatives.removed_pairs import (
    FILE_NAME,
    RemovedPairSample,
    read_removed_pairs,
    records_to_csv,
    rows_to_records,
)
from debiascl.train.atomic import atomic_write_text


def save_removed_pairs(sample: RemovedPairSample | None, run_dir: Path) -> None:
    """Gather the sample (every rank must call) and write ``removed_pairs.csv`` on rank 0.

    Rows already in the file from epochs before this process's first recorded epoch (a resumed
    run) are merged in by their keys, so the file stays one uniform sample of the whole run.
    """
    if sample is None:
        return
    rows = rows_to_records(sample.gathered())
    if not dist_utils.is_main_process():
        return
    path = Path(run_dir) / FILE_NAME
    first = sample.first_epoch
    if first is not None and first > 1:
        rows += [r for r in read_removed_pairs(path) if r["epoch"] < first]
    rows = sorted(rows, key=lambda r: r["key"])[: sample.capacity]
    rows.sort(key=lambda r: -r["similarity"])
    atomic_write_text(path, records_to_csv(rows))


def attach_removed_pairs(objective: Any, capacity: int, seed: int) -> RemovedPairSample | None:
    """Give ``objective`` (a ContrastiveObjective) a sample when it has a detector and
    ``capacity > 0``; returns it (or None)."""
    from debiascl.objectives.base import NoDetector

    if capacity <= 0 or isinstance(objective.detector, NoDetector):
        objective.removed_pairs = None
        return None
    objective.removed_pairs = RemovedPairSample(capacity, seed)
    return objective.removed_pairs
