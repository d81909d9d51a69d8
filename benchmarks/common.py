"""Timing helpers shared by the benchmark sections.

The machines these run on are shared and noisy, so every comparison is made **in one process**,
calls alternate round-robin, and the report is medians and ratios. Kernel timings use the CPU time
of the calling thread (``time.thread_time``) by default: with one intra-op thread all the work
of a forward + backward runs on it, and unlike wall time it does not count the time the process
spends descheduled while other jobs run. Sections that use worker processes or several ranks
(data pipeline, distributed) use wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

Clock = Callable[[], float]


def interleaved(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 2,
    clock: Clock = time.thread_time,
) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn ``rounds`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
