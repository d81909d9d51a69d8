"""Run-directory logging: metrics.jsonl (one object per epoch) and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from debiascl.train.atomic import atomic_write_text


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def scalar_leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"a/b": value}`` of the finite int / float leaves of a nested dict (bools left out):
    the scalars of an evaluation result, as TensorBoard tags."""
    flat: dict[str, float] = {}
    for key, val in tree.items():
        name = f"{prefix}{key}"
        if isinstance(val, dict):
            flat.update(scalar_leaves(val, name + "/"))
        elif isinstance(val, int | float) and not isinstance(val, bool) and math.isfinite(val):
            flat[name] = float(val)
    return flat


class RunLogger:
    """Writes epoch records to ``metrics.jsonl`` and scalars to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir))

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self._tb is None:
            return
        for key, val in values.items():
            if isinstance(val, int | float) and math.isfinite(float(val)):
                self._tb.add_scalar(f"{prefix}{key}", float(val), step)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with (self.run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(_clean(record)) + "\n")
        self.scalars(
            {k: v for k, v in record.items() if k not in ("epoch", "step")},
            record.get("step", 0),
            prefix="epoch/",
        )

    def summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(
                self.run_dir / "summary.json", json.dumps(_clean(summary), indent=2) + "\n"
            )

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
