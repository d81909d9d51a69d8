"""Per-sample tables indexed by dataset sample id (SogCLR's u, GloFND's lambda and Adam moments).

One :class:`SampleTable` packs C float32 columns of N samples into a single (N, C) buffer, so a
step reads all of a batch's state with one ``index_select`` and writes it back with one
``index_copy_`` (DESIGN 3.3: a packed table is several times faster than C separate (N, 1)
tables indexed with ``t[idx]``). The per-step cost is O(batch), independent of N.

Visit counts are an ordinary column (conventionally named ``"visits"``): float32 counts are exact
up to 2**24 (16.7 million visits of one sample), far beyond any training run.

Distributed training (DESIGN 5): tables are *not* DDP buffers (DDP would overwrite every rank's
copy with rank 0's each forward and lose the other ranks' updates). Instead each rank passes its
local ``(ids, rows)`` to :meth:`SampleTable.write`, which all-gathers the global batch's rows in one
collective and scatters them into every rank's copy, so all ranks hold identical tables after
every step. Every rank must call ``write`` at the same point of the step with the same number of
rows (the contrastive layouts already require equal local batch sizes).

Placement: ``"device"`` keeps the table wherever the module is moved (``.to(cuda)``);
``"cpu"`` pins it in host memory for id spaces too large for the accelerator (16 bytes per id for
four columns: 1.6 GB at 10**8 ids) and moves only the batch's rows. In both cases the table stays
float32 whatever dtype the surrounding model is cast to.

Copies between devices (:func:`to_device`): a host-to-device copy may be asynchronous (the
source is staged before the call returns, and the device reads it in stream order), but a
device-to-host copy is always blocking. ``tensor.to("cpu", non_blocking=True)`` from a GPU returns
before the data has arrived, and the CPU ``index_select``/``index_copy_`` that follows would read
whatever the destination held (garbage ids, stale rows) without a synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from debiascl.errors import CheckpointError, ConfigError, DataError
from debiascl.state.sync import all_gather_rows

Placement = Literal["device", "cpu"]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; asynchronous only where that is safe (see the module docstring).

    A copy whose destination is the CPU is blocking, so the host may read the result at once.
    """
    if t.device == device:
        return t
    return t.to(device, non_blocking=device.type != "cpu")


class SampleTable(nn.Module):
    """A float32 (N, C) table of per-sample state with cross-rank synchronised writes.

    Args:
        num_samples: size N of the sample-id space.
        columns: names of the C columns.
        defaults: initial value of each column (a float for all, or one per column).
        placement: ``"device"`` (follows ``module.to``) or ``"cpu"`` (stays in host memory).
        sync: all-gather writes across ranks when a process group is initialised.
        validate: check that ids are in [0, N) on read and distinct on write (a few small
            reductions per step; turn off only when the caller has already validated).

    Attributes:
        data: (N, C) float32 buffer, saved in ``state_dict``.
    """

    data: torch.Tensor

    def __init__(
        self,
        num_samples: int,
        columns: Sequence[str],
        defaults: float | Sequence[float] = 0.0,
        placement: Placement = "device",
        sync: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples must be a positive int, got {num_samples!r}")
        if len(columns) == 0 or len(set(columns)) != len(columns):
            raise ConfigError(f"table columns must be distinct and non-empty, got {columns!r}")
        if placement not in ("device", "cpu"):
            raise ConfigError(f"table placement must be 'device' or 'cpu', got {placement!r}")
        if isinstance(defaults, (int, float)):
            defaults = [float(defaults)] * len(columns)
        if len(defaults) != len(columns):
            raise ConfigError(f"got {len(defaults)} defaults for {len(columns)} table columns")
        self.num_samples = num_samples
        self.columns = tuple(columns)
        self.defaults = tuple(float(d) for d in defaults)
        self.placement = placement
        self.sync = sync
        self.validate = validate
        row = torch.tensor(self.defaults, dtype=torch.float32)
        data = row.expand(num_samples, len(columns)).contiguous()
        if placement == "cpu" and torch.cuda.is_available():
            data = data.pin_memory()
        self.register_buffer("data", data)

    # ------------------------------------------------------------------ access
    def column(self, name: str) -> int:
        """Index of column ``name`` in the rows returned by :meth:`read`."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise KeyError(f"table has no column {name!r}; columns: {self.columns}") from None

    @property
    def device(self) -> torch.device:
        return self.data.device

    def check_ids(self, ids: torch.Tensor, unique: bool = False) -> None:
        """Raise :class:`DataError` unless ``ids`` are integer ids in [0, N) (and distinct)."""
        if ids.is_floating_point() or ids.is_complex() or ids.dim() != 1:
            raise DataError(
                f"sample ids must be a 1-D integer tensor, got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.numel() == 0:
            return
        lo, hi = ids.aminmax()
        bad_range = (lo < 0) | (hi >= self.num_samples)
        if unique and ids.numel() > 1:
            srt = ids.sort().values
            bad_dup = (srt[1:] == srt[:-1]).any()
            flags = torch.stack([bad_range, bad_dup]).tolist()
        else:
            flags = [bool(bad_range), False]
        if flags[0]:
            bad = int(lo) if int(lo) < 0 else int(hi)
            raise DataError(
                f"sample id {bad} is outside [0, {self.num_samples}); the dataset must return "
                f"stable ids in [0, num_samples) (set num_samples to the size of the id space)"
            )
        if flags[1]:
            raise DataError(
                "duplicate sample ids in one global batch; each sample may appear once per step "
                "(use a sampler without replacement, e.g. DistributedSampler with drop_last=True)"
            )

    def needs_check(self, checked_below: int | None) -> bool:
        """Whether :meth:`read`/:meth:`write` validate ids: ``validate`` is on and the caller has
        not already checked them (distinct, in [0, ``checked_below``) with ``checked_below <=
        N``; :class:`~debiascl.objectives.ContrastiveObjective` does, once per global batch)."""
        return self.validate and (checked_below is None or checked_below > self.num_samples)

    def read(self, ids: torch.Tensor, checked_below: int | None = None) -> torch.Tensor:
        """Rows of ``ids``.

        Args:
            ids: (n,) int64 sample ids in [0, N).
            checked_below: see :meth:`needs_check` (``None``: this call checks the ids).

        Returns:
            (n, C) float32 copy on ``ids.device`` (columns in :attr:`columns` order).
        """
        if self.needs_check(checked_below):
            self.check_ids(ids)
        rows = self.data.index_select(0, to_device(ids, self.data.device))
        return to_device(rows, ids.device)

    @torch.no_grad()
    def write(
        self, ids: torch.Tensor, rows: torch.Tensor, checked_below: int | None = None
    ) -> None:
        """Store ``rows`` for the local ``ids``, and the other ranks' rows for theirs.

        Args:
            ids: (n,) int64 distinct sample ids (local to this rank).
            rows: (n, C) new values (cast to float32).
            checked_below: see :meth:`needs_check` (``None``: this call checks the ids).

        Under a process group (and ``sync=True``) this is a collective: every rank must call it
        with the same n. Afterwards every rank's table holds the rows of the whole global batch.
        Rows containing NaN or inf are not stored (the previous values stay).
        """
        ids, rows = self._gather_rows(ids, rows, self.sync, checked_below)
        dev = self.data.device
        self._store_rows(to_device(ids, dev), to_device(rows, dev))

    def _gather_rows(
        self,
        ids: torch.Tensor,
        rows: torch.Tensor,
        collective: bool,
        checked_below: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check ``rows`` against ``ids``, all-gather the global batch when ``collective`` and
        validate its ids; returns (int64 ids, float32 rows) of the (global) batch."""
        if rows.dim() != 2 or rows.shape != (ids.shape[0], len(self.columns)):
            raise DataError(
                f"table rows must have shape ({ids.shape[0]}, {len(self.columns)}), got "
                f"{tuple(rows.shape)}"
            )
        ids, rows = ids.long(), rows.detach().float()
        if collective:
            ids, rows = all_gather_rows(ids, rows)
        if self.needs_check(checked_below):
            self.check_ids(ids, unique=True)
        return ids, rows

    def _store_rows(self, local: torch.Tensor, rows: torch.Tensor) -> None:
        """Copy ``rows`` into the stored rows ``local`` (both on the table's device)."""
        # A non-finite row (from a NaN step that train.on_nonfinite=skip will discard) keeps the
        # stored values: a table entry is never valid as NaN/inf.
        if rows.device.type == "cpu" and np.isfinite(rows.numpy()).all():
            # CPU: one numpy check (no synchronisation to avoid) instead of five tensor ops
            self.data.index_copy_(0, local, rows)
            return
        # No host synchronisation on accelerators.
        # x - x is 0 exactly when x is finite (NaN for inf and NaN): half of isfinite's passes
        finite = rows.sub(rows).eq_(0.0).all(dim=1, keepdim=True)
        rows = torch.where(finite, rows, self.data.index_select(0, local))
        self.data.index_copy_(0, local, rows)

    @torch.no_grad()
    def reset(self, ids: torch.Tensor | None = None) -> None:
        """Restore the defaults for ``ids`` (all samples when None; local, no collective)."""
        row = torch.tensor(self.defaults, dtype=torch.float32, device=self.data.device)
        if ids is None:
            self.data.copy_(row.expand_as(self.data))
        else:
            self.data[to_device(ids, self.data.device)] = row

    # -------------------------------------------------------------- persistence
    def get_extra_state(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "columns": list(self.columns)}

    def set_extra_state(self, state: Any) -> None:  # checked in _load_from_state_dict
        pass

    def _load_from_state_dict(  # type: ignore[override]
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        extra = state_dict.get(prefix + "_extra_state")
        self._check_columns(extra, prefix)
        data = state_dict.get(prefix + "data")
        if data is not None and tuple(data.shape) != tuple(self.data.shape):
            raise CheckpointError(
                f"checkpoint table {prefix + 'data'!r} has shape {tuple(data.shape)} but this run "
                f"has {self.num_samples} samples x {len(self.columns)} columns; resume on the same "
                f"dataset (same num_samples) and method settings"
            )
        if data is not None:
            # Copy as float32 onto the table's own device, whatever the checkpoint's map_location.
            state_dict = dict(state_dict)
            state_dict[prefix + "data"] = data.to(self.data.device, torch.float32)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_columns(self, extra: Any, prefix: str) -> None:
        """Raise :class:`CheckpointError` when a checkpoint's columns differ from this table's."""
        if isinstance(extra, dict) and list(extra.get("columns", [])) != list(self.columns):
            raise CheckpointError(
                f"checkpoint table {prefix or 'table'!r} has columns {extra.get('columns')}, "
                f"this run expects {list(self.columns)}; resume with the same method settings"
            )

    def _apply(self, fn: Any, recurse: bool = True) -> SampleTable:  # type: ignore[override]
        # Follow device moves (placement "device") but never dtype casts: a model.half() or
        # model.double() must not change the table's float32 precision.
        if self.placement == "device":
            target = fn(torch.empty(0, device=self.data.device)).device
            if target != self.data.device:
                self.data = self.data.to(target)
        return self

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, columns={self.columns}, "
            f"placement={self.placement!r}, device={self.data.device}"
        )
