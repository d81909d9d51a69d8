"""Accumulate (scores, targets, attributes) over evaluation batches and DDP ranks, then audit.

Fairness metrics are not averages of per-batch values (AUC and group rates need every row), so
:class:`FairnessAudit` keeps the rows and, in :meth:`FairnessAudit.compute`, all-gathers them from
every rank (ranks may hold different numbers of rows) before calling
:func:`debiascl.fairness.metrics.fairness_report`. The result is identical on every rank and equal
to a single-process audit of the concatenated rows (rank 0's rows first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from debiascl import distributed
from debiascl.errors import DataError
from debiascl.fairness.metrics import MISSING, fairness_report


class FairnessAudit:
    """Collect scored rows batch by batch; compute the fairness report over all ranks.

    Args:
        attribute_names: names of the sensitive attributes, in the column order of an (b, A)
            ``attrs`` tensor.
        value_names: optional name -> list of value names; integer code k of that attribute
            means ``value_names[name][k]``. Codes outside the list are an error (unseen value);
            ``-1`` means missing.
        class_names: optional names of the score columns.

    Example::

        audit = FairnessAudit(["sex", "race"], value_names={"sex": ["F", "M"]})
        for batch in loader:
            audit.update(probs, batch["label"], batch["attrs"])
        report = audit.compute(threshold=t_val, intersections=[("sex", "race")])
    """

    def __init__(
        self,
        attribute_names: Sequence[str],
        value_names: Mapping[str, Sequence[str]] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not attribute_names:
            raise DataError("FairnessAudit needs at least one attribute name")
        self.attribute_names = list(attribute_names)
        self.value_names = {k: list(v) for k, v in (value_names or {}).items()}
        self.class_names = class_names
        self.reset()

    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._attrs: list[torch.Tensor] = []

    @torch.no_grad()
    def update(
        self,
        scores: torch.Tensor,
        targets: torch.Tensor,
        attrs: torch.Tensor | Mapping[str, torch.Tensor],
    ) -> None:
        """Add a batch: scores (b,) or (b, C), targets (b,) or (b, C), attrs (b, A) or a mapping
        name -> (b,) of integer codes (-1 = missing)."""
        if isinstance(attrs, Mapping):
            absent = [a for a in self.attribute_names if a not in attrs]
            if absent:
                raise DataError(
                    f"attributes {absent} are missing from the batch (have {sorted(attrs)}); "
                    "add the attribute columns to the evaluation data"
                )
            attrs = torch.stack([torch.as_tensor(attrs[a]) for a in self.attribute_names], 1)
        attrs = torch.as_tensor(attrs)
        if attrs.ndim == 1 and len(self.attribute_names) == 1:
            attrs = attrs[:, None]
        b = scores.shape[0]
        if targets.shape[0] != b or attrs.shape[0] != b:
            raise DataError(
                f"batch has {b} scores, {targets.shape[0]} targets and {attrs.shape[0]} attribute "
                "rows; pass one of each per sample"
            )
        if attrs.ndim != 2 or attrs.shape[1] != len(self.attribute_names):
            raise DataError(
                f"attrs has shape {tuple(attrs.shape)}; expected ({b}, "
                f"{len(self.attribute_names)}) for attributes {self.attribute_names}"
            )
        self._scores.append(scores.detach().float().cpu())
        self._targets.append(targets.detach().long().cpu())
        self._attrs.append(attrs.detach().long().cpu())

    def gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, targets, attrs) of every rank, concatenated in rank order (collective)."""
        if not self._scores:
            raise DataError("FairnessAudit.compute called before any update; evaluate some data")
        parts = [torch.cat(x) for x in (self._scores, self._targets, self._attrs)]
        if distributed.is_distributed():
            parts = [_gather_rows(p) for p in parts]
        return tuple(p.numpy() for p in parts)  # type: ignore[return-value]

    def compute(self, threshold: float | Sequence[float] | str, **kwargs: object) -> dict:
        """The :func:`fairness_report` over all rows of all ranks (a collective call)."""
        scores, targets, codes = self.gathered()
        attributes: dict[str, np.ndarray] = {}
        known: dict[str, list[str]] = {}
        for j, name in enumerate(self.attribute_names):
            col = codes[:, j]
            if name in self.value_names:
                names = self.value_names[name]
                bad = sorted({int(c) for c in col if c != MISSING and not 0 <= c < len(names)})
                if bad:
                    raise DataError(
                        f"attribute {name!r} has codes {bad} that were not seen in training "
                        f"(known: {names}); fix the attribute coding"
                    )
                attributes[name] = np.array(
                    [None if c == MISSING else names[c] for c in col], dtype=object
                )
                known[name] = names
            else:
                attributes[name] = col
        kwargs.setdefault("class_names", self.class_names)
        return fairness_report(
            scores, targets, attributes, threshold, known_values=known or None, **kwargs
        )


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All-gather tensors whose first dimension differs between ranks (pad, gather, trim)."""
    # NCCL only moves CUDA tensors; gloo works on CPU.
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    x = x.to(device)
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(n) for _ in range(distributed.world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    pad = torch.zeros((longest - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=device)
    padded = torch.cat([x, pad])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).cpu()
