"""Checkpoints of sharded per-sample tables (``table_sharding: sharded``), complete and exact.

Saving (:func:`save_with_shards`, a collective): every rank writes the rows it stores as one
shard file beside the checkpoint (:mod:`debiascl.checkpoint.shards`); only when every rank's
file is complete does rank 0 write the checkpoint, which records the files (token, size,
SHA-256) instead of rank 0's rows. A crash mid-save leaves the previous checkpoint as the latest
one, and its own shard files untouched.

Resuming (:func:`complete_state`): each rank reads the shard files holding the ids it stores
now and puts its rows into the objective's state, so any of these resume exactly:

* the same number of processes: each rank reads only its own file;
* another number of processes (re-sharding): each rank reads the files of the old ranks that
  share ids with it (all of them at worst), one at a time;
* ``table_sharding: replicated`` now: every rank assembles the full table from all files.

A checkpoint of a replicated run holds full tables; a sharded run resumed from it takes its own
rows (:class:`~debiascl.state.ShardedSampleTable` loads full tables).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from debiascl import distributed as dist_utils
from debiascl.checkpoint.files import save_checkpoint
from debiascl.checkpoint.shards import (
    SHARDS_KEY,
    check_manifest,
    make_manifest,
    new_token,
    read_shard,
    shard_name,
    write_shard,
)
from debiascl.errors import CheckpointError, TrainingError
from debiascl.state.sharded import ShardedSampleTable, copy_owned_rows, shard_sources
from debiascl.state.tables import SampleTable

logger = logging.getLogger("debiascl.train")


def sample_tables(module: nn.Module) -> dict[str, SampleTable]:
    """Every :class:`SampleTable` in ``module`` by its state-dict prefix (``"loss_fn.u_a."``)."""
    return {f"{n}.": m for n, m in module.named_modules() if n and isinstance(m, SampleTable)}


def _agree_on_failure(error: BaseException | None, device: torch.device) -> bool:
    """True on every rank when any rank has an ``error`` (a collective under DDP)."""
    if not dist_utils.is_distributed():
        return error is not None
    flag = torch.tensor(float(error is not None), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _write_shards(
    tables: dict[str, ShardedSampleTable], directory: Path, stem: str, device: torch.device
) -> tuple[dict[str, Any] | None, TrainingError | None]:
    """Every rank writes its rows (collective); (manifest, None) or (None, this rank's error)."""
    rank, world = dist_utils.rank(), dist_utils.world_size()
    for prefix, table in tables.items():
        if (table.rank, table.world_size) != (rank, world):
            raise TrainingError(
                f"table {prefix!r} is sharded over {table.world_size} ranks but the run has "
                f"{world}; build the objective after the process group is initialised"
            )
    token = str(dist_utils.broadcast_object(new_token()))
    error: TrainingError | None = None
    entry: dict[str, Any] | None = None
    try:
        entry = write_shard(
            directory, stem, token, rank, world, {p: t.data for p, t in tables.items()}
        )
    except TrainingError as err:
        error = err
    if _agree_on_failure(error, device):
        (directory / shard_name(stem, token, rank, world)).unlink(missing_ok=True)
        if error is None:
            error = TrainingError("another rank could not write its table shard; see its message")
        return None, error
    entries: list[Any] = [entry]
    if dist_utils.is_distributed():
        entries = [None] * world
        dist.all_gather_object(entries, entry)
    return make_manifest(token, list(tables), entries), None


def save_with_shards(
    objective: nn.Module,
    directory: Path,
    name: str,
    make_state: Callable[[], dict[str, Any]],
    keep_last: int,
    is_best: bool,
    device: torch.device,
) -> Path | None:
    """Save a checkpoint whose sharded tables travel in per-rank files (collective).

    Args:
        objective: the module whose :class:`ShardedSampleTable` rows go to shard files; its
            state in ``make_state()['objective']`` keeps the tables' metadata only.
        make_state: builds the checkpoint mapping (called on rank 0 only).
        device: where this rank's collectives run (the trainer's device).

    Returns:
        The checkpoint path on rank 0, None elsewhere.

    Raises:
        TrainingError: on every rank when any rank's write failed; no checkpoint refers to a
            partial save, and the previous checkpoint is intact.
    """
    directory = Path(directory)
    sharded = {
        p: t for p, t in sample_tables(objective).items() if isinstance(t, ShardedSampleTable)
    }
    manifest, error = None, None
    if sharded:
        manifest, error = _write_shards(sharded, directory, Path(name).stem, device)
    path = None
    if dist_utils.is_main_process() and error is None:
        try:
            state = make_state()
            if manifest is not None:
                data_keys = {p + "data" for p in sharded}
                state["objective"] = {
                    k: v for k, v in state["objective"].items() if k not in data_keys
                }
                state[SHARDS_KEY] = manifest
            token = manifest["token"] if manifest is not None else None
            path = save_checkpoint(state, directory, name, keep_last, is_best, token)
        except TrainingError as err:
            error = err
    if _agree_on_failure(error, device) and error is None:
        error = TrainingError("rank 0 could not write a checkpoint; see its message")
    dist_utils.barrier()
    if error is not None:
        raise error
    return path


def _target(table: SampleTable) -> tuple[int, int, torch.Tensor]:
    """(rank, world, empty rows) of the ids ``table`` stores (replicated: rank 0 of 1)."""
    if isinstance(table, ShardedSampleTable):
        rank, world, rows = table.rank, table.world_size, table.data.shape[0]
    else:
        rank, world, rows = 0, 1, table.num_samples
    return rank, world, torch.empty(rows, len(table.columns), dtype=torch.float32)


def complete_state(state: dict[str, Any], path: Path, objective: nn.Module) -> dict[str, Any]:
    """``state`` with this rank's table rows read from the checkpoint's shard files.

    A checkpoint without shard files is returned as it is.

    Raises:
        CheckpointError: a shard file is missing, damaged or from another save (the message
            names it), or the shards do not fit this objective's tables.
    """
    if state.get(SHARDS_KEY) is None:
        return state
    manifest = check_manifest(state[SHARDS_KEY], path)
    saved_world = manifest["world_size"]
    tables = sample_tables(objective)
    fix = "resume with the run's own config.yaml"
    unknown = [k for k in manifest.get("keys", []) if k not in tables]
    if unknown:
        raise CheckpointError(
            f"checkpoint {path} has table shards for {unknown}, which this objective lacks; {fix}"
        )
    targets = {key: _target(tables[key]) for key in manifest["keys"]}
    sources: set[int] = set()
    for rank, world, _ in targets.values():
        sources.update(shard_sources(rank, world, saved_world))
    for src in sorted(sources):
        part = read_shard(path, manifest, src)
        for key, (rank, world, out) in targets.items():
            rows, table = part.get(key), tables[key]
            want = (len(range(src, table.num_samples, saved_world)), len(table.columns))
            if rows is None or tuple(rows.shape) != want:
                got = None if rows is None else tuple(rows.shape)
                raise CheckpointError(
                    f"table shard {key!r} of checkpoint {path} (rank {src} of {saved_world}) "
                    f"has shape {got}, this run needs {want}; {fix}"
                )
            copy_owned_rows(rows, src, saved_world, out, rank, world)
        del part
    sharded_now = [t for t in tables.values() if isinstance(t, ShardedSampleTable)]
    now = sharded_now[0].world_size if sharded_now else None
    if now != saved_world:
        logger.info(
            "table rows of %d rank shards re-sharded for %s",
            saved_world,
            f"{now} ranks" if now else "replicated tables",
        )
    objective_state = dict(state["objective"])
    for key, (rank, world, out) in targets.items():
        objective_state[key + "data"] = out
        if isinstance(tables[key], ShardedSampleTable):
            extra = dict(objective_state.get(key + "_extra_state") or {})
            extra.update(rank=rank, world_size=world, num_samples=tables[key].num_samples)
            objective_state[key + "_extra_state"] = extra
    return {**state, "objective": objective_state}
