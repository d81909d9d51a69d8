"""Per-sample tables sharded over ranks: each rank stores only the ids it owns.

A replicated :class:`~debiascl.state.tables.SampleTable` costs N x C x 4 bytes on *every* rank
(16 bytes per id for GloFND's four columns: 16 GB per rank at 10**9 ids). A
:class:`ShardedSampleTable` stores id ``i`` only on rank ``i % world_size`` (row ``i //
world_size`` there), so each rank holds about N / world_size rows; random sample ids spread
evenly over ranks whatever the id order.

Same interface as :class:`SampleTable` (``read`` / ``write`` / ``reset`` / ``state_dict``); the
difference is that :meth:`ShardedSampleTable.read` is a collective too:

* read: all-gather the requested ids of the global batch (one collective), every rank fills the
  rows it owns and zeros elsewhere, and a sum over ranks (reduce-scatter on NCCL, all-reduce on
  gloo, which has no reduce-scatter) hands each rank its own rows. A sum of one stored value and
  zeros is that value exactly, so reads are bit-identical to a replicated table's;
* write: the same single all-gather of ``(ids, rows)`` as the replicated table, after which each
  rank stores only the rows it owns.

Per-step cost and communication are O(global batch x C), independent of N. Every rank must call
``read`` and ``write`` at the same points with the same number of ids.

Checkpoints: ``state_dict`` holds this rank's shard. The trainer writes one shard file per rank
next to the checkpoint (:mod:`debiascl.train.table_shards`); loading accepts this rank's shard
or a full (N, C) table (e.g. from a replicated run), from which it takes its own rows, and
:func:`copy_owned_rows` re-shards the rows of another world size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist

from debiascl import distributed as dist_utils
from debiascl.errors import CheckpointError, ConfigError
from debiascl.state.tables import Placement, SampleTable

Sharding = Literal["replicated", "sharded"]


def copy_owned_rows(
    part: torch.Tensor, part_rank: int, part_world: int, out: torch.Tensor, rank: int, world: int
) -> None:
    """Copy into ``out`` the rows of ``part`` that rank ``rank`` of ``world`` stores.

    Args:
        part: (rows, C) rows of the ids ``part_rank, part_rank + part_world, ...`` (a shard of
            a table sharded over ``part_world`` ranks; ``part_world = 1``: the full table).
        out: (ceil((N - rank) / world), C) rows of the ids ``rank, rank + world, ...``, filled
            in place (``world = 1``: the full table).
    """
    ids = torch.arange(part.shape[0], dtype=torch.int64) * part_world + part_rank
    mine = ids % world == rank
    local = ids[mine] // world
    out.index_copy_(0, local.to(out.device), part[mine].to(out.device, out.dtype))


def shard_sources(rank: int, world: int, part_world: int) -> list[int]:
    """Ranks of a ``part_world``-way sharding that hold some id rank ``rank`` of ``world`` owns
    (ids ``i = rank mod world`` and ``i = r mod part_world`` exist iff gcd divides the gap)."""
    g = math.gcd(world, part_world)
    return [r for r in range(part_world) if (r - rank) % g == 0]


def make_table(
    num_samples: int,
    columns: Sequence[str],
    defaults: float | Sequence[float] = 0.0,
    placement: Placement = "device",
    sharding: Sharding = "replicated",
) -> SampleTable:
    """A replicated :class:`SampleTable` or a :class:`ShardedSampleTable` (``table_sharding``)."""
    if sharding == "replicated":
        return SampleTable(num_samples, columns, defaults, placement=placement)
    if sharding == "sharded":
        return ShardedSampleTable(num_samples, columns, defaults, placement=placement)
    raise ConfigError(f"table sharding must be 'replicated' or 'sharded', got {sharding!r}")


class ShardedSampleTable(SampleTable):
    """A float32 table of N x C per-sample state of which this rank stores the ids it owns.

    Args:
        num_samples, columns, defaults, placement, validate: as for :class:`SampleTable`.
        rank, world_size: this rank and the number of ranks (default: the process group at
            construction, else 0 and 1).

    Attributes:
        data: (ceil((N - rank) / world_size), C) float32 rows of the ids ``rank, rank + world,
            rank + 2 world, ...``.
    """

    def __init__(
        self,
        num_samples: int,
        columns: Sequence[str],
        defaults: float | Sequence[float] = 0.0,
        placement: Placement = "device",
        validate: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples must be a positive int, got {num_samples!r}")
        super().__init__(1, columns, defaults, placement=placement, sync=False, validate=validate)
        self.rank = dist_utils.rank() if rank is None else int(rank)
        self.world_size = dist_utils.world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in [0, world_size), got {self.rank} of {world_size}")
        if num_samples < self.world_size:
            raise ConfigError(
                f"a sharded table needs at least one id per rank ({num_samples} ids, "
                f"{self.world_size} ranks); use table_sharding=replicated"
            )
        self.num_samples = num_samples
        rows = self.owned_count(self.rank)
        row = torch.tensor(self.defaults, dtype=torch.float32)
        data = row.expand(rows, len(self.columns)).contiguous()
        if placement == "cpu" and torch.cuda.is_available():
            data = data.pin_memory()
        self.data = data

    def owned_count(self, rank: int) -> int:
        """Number of ids rank ``rank`` stores."""
        return max(0, -(-(self.num_samples - rank) // self.world_size))

    @property
    def local_bytes(self) -> int:
        """Bytes of table rows stored on this rank."""
        return self.data.numel() * self.data.element_size()

    def _collective(self) -> bool:
        return self.world_size > 1 and dist_utils.is_distributed()

    # ------------------------------------------------------------------ access
    def read(self, ids: torch.Tensor, checked_below: int | None = None) -> torch.Tensor:
        """Rows of ``ids`` (collective: every rank calls it with the same number of ids).

        Args:
            ids: (n,) int64 sample ids in [0, N).
            checked_below: as for :meth:`SampleTable.read`.

        Returns:
            (n, C) float32 on ``ids.device``, equal to a replicated table's rows.
        """
        if self.needs_check(checked_below):
            self.check_ids(ids)
        dev = self.data.device
        if not self._collective():
            return self.data.index_select(0, ids.to(dev)).to(ids.device)
        n, c = ids.shape[0], len(self.columns)
        ids = ids.long().contiguous()
        all_ids = torch.empty(self.world_size * n, dtype=torch.int64, device=ids.device)
        dist_utils.all_gather_single(all_ids, ids)
        owned = (all_ids % self.world_size) == self.rank
        local = torch.where(owned, all_ids // self.world_size, torch.zeros_like(all_ids))
        rows = self.data.index_select(0, local.to(dev)).to(ids.device)
        rows = torch.where(owned[:, None], rows, torch.zeros_like(rows))
        if dist.get_backend() == "nccl":
            out = torch.empty(n, c, dtype=rows.dtype, device=rows.device)
            dist_utils.reduce_scatter_single(out, rows)
            return out
        dist.all_reduce(rows, op=dist.ReduceOp.SUM)
        return rows[self.rank * n : (self.rank + 1) * n]

    @torch.no_grad()
    def write(
        self, ids: torch.Tensor, rows: torch.Tensor, checked_below: int | None = None
    ) -> None:
        """Store the global batch's rows that this rank owns (collective, like ``read``).

        Args:
            ids: (n,) int64 distinct sample ids (local to this rank).
            rows: (n, C) new values; rows with NaN or inf are not stored.
            checked_below: as for :meth:`SampleTable.write`.
        """
        ids, rows = self._gather_rows(ids, rows, self._collective(), checked_below)
        owned = (ids % self.world_size) == self.rank
        dev = self.data.device
        self._store_rows((ids[owned] // self.world_size).to(dev), rows[owned].to(dev))

    @torch.no_grad()
    def reset(self, ids: torch.Tensor | None = None) -> None:
        """Restore the defaults for ``ids`` this rank owns (all when None; no collective)."""
        row = torch.tensor(self.defaults, dtype=torch.float32, device=self.data.device)
        if ids is None:
            self.data.copy_(row.expand_as(self.data))
            return
        ids = ids.long().to(self.data.device)
        self.data[ids[ids % self.world_size == self.rank] // self.world_size] = row

    @torch.no_grad()
    def full_table(self) -> torch.Tensor:
        """The whole (N, C) table on every rank (collective; O(N) memory on every rank: for tests
        and one-off exports, not for training steps or per-epoch diagnostics, which
        :func:`~debiascl.state.summary.summarize` computes from the shards)."""
        if not self._collective():
            return self.data.clone()
        longest = self.owned_count(0)
        padded = torch.zeros(longest, len(self.columns), dtype=torch.float32)
        padded[: self.data.shape[0]] = self.data.cpu()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        if dist.get_backend() == "nccl":
            padded = padded.to(torch.device("cuda", torch.cuda.current_device()))
            parts = [p.to(padded.device) for p in parts]
        dist.all_gather(parts, padded)
        full = torch.empty(self.num_samples, len(self.columns), dtype=torch.float32)
        for r, part in enumerate(parts):
            full[r :: self.world_size] = part[: self.owned_count(r)].cpu()
        return full.to(self.data.device)

    # -------------------------------------------------------------- persistence
    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "rank": self.rank, "world_size": self.world_size}

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
        data = state_dict.get(prefix + "data")
        extra = state_dict.get(prefix + "_extra_state")
        if data is not None:
            c = len(self.columns)
            if tuple(data.shape) == (self.num_samples, c):  # a full table: take our rows
                data = data[self.rank :: self.world_size]
            elif not isinstance(extra, dict) or (
                extra.get("rank"),
                extra.get("world_size"),
                extra.get("num_samples"),
            ) != (self.rank, self.world_size, self.num_samples):
                raise CheckpointError(
                    f"checkpoint table {prefix + 'data'!r} with shape {tuple(data.shape)} is "
                    f"neither the full ({self.num_samples}, {c}) table nor rank {self.rank}'s "
                    f"shard of {self.world_size}; resume with the same number of processes or "
                    "from a full table (ShardedSampleTable.full_table)"
                )
            state_dict = dict(state_dict)
            state_dict[prefix + "data"] = data.to(self.data.device, torch.float32).contiguous()
        nn_load = super(SampleTable, self)._load_from_state_dict
        self._check_columns(extra, prefix)
        nn_load(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, columns={self.columns}, rank={self.rank}, "
            f"world_size={self.world_size}, local_rows={self.data.shape[0]}, "
            f"placement={self.placement!r}, device={self.data.device}"
        )
