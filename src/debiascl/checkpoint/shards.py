"""Per-rank shard files of sharded per-sample tables, written next to a checkpoint.

A run with ``table_sharding: sharded`` keeps about N / world rows of each table on each rank,
so no rank can write the whole table. Every rank writes its own rows as one file beside the
checkpoint, and the checkpoint (written by rank 0 *after* every shard file is complete) records
which files belong to it::

    checkpoints/epoch0001-step00000008.pt                          <- manifest under SHARDS_KEY
    checkpoints/epoch0001-step00000008.<token>.rank0of2.shard
    checkpoints/epoch0001-step00000008.<token>.rank1of2.shard

``token`` is random per save, so two saves of the same step (a run resumed from an earlier
checkpoint passes it again) never share a file name, and the manifest holds each file's size
and SHA-256. Every file is written atomically (:func:`~debiascl.atomic.atomic_write`). A crash
at any instant therefore leaves either no checkpoint for the new step (its shards are orphans,
deleted by the next save, :func:`prune_shards`) or a complete one; a checkpoint never refers to
shards of another step. ``best.pt`` gets its own links ``best.<token>.rank{r}of{W}.shard``.

The manifest: ``{"token", "world_size", "keys": [state-dict prefixes], "files": [{"rank",
"size", "sha256"}, ...]}``; a shard file: ``{"token", "rank", "world_size", "tables": {prefix:
(rows, C) float32}}``, read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path
from typing import Any, BinaryIO

import torch

from debiascl.atomic import atomic_write
from debiascl.errors import CheckpointError

#: The checkpoint entry holding the manifest of its shard files.
SHARDS_KEY = "table_shards"
_SHARD = re.compile(r"^(?P<stem>.+)\.(?P<token>[0-9a-f]{16})\.rank(\d+)of(\d+)\.shard$")
_CHUNK = 1 << 22


def new_token() -> str:
    """A random 16-hex-digit token naming one save's shard files."""
    return secrets.token_hex(8)


def shard_name(stem: str, token: str, rank: int, world_size: int) -> str:
    """File name of rank ``rank``'s shard of the checkpoint ``<stem>.pt``."""
    return f"{stem}.{token}.rank{rank}of{world_size}.shard"


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += view.nbytes
        return self.fh.write(view)

    def flush(self) -> None:
        self.fh.flush()


def write_shard(
    directory: Path,
    stem: str,
    token: str,
    rank: int,
    world_size: int,
    tables: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Write this rank's rows atomically; returns its manifest entry (rank, size, sha256).

    Args:
        directory: the checkpoint folder; stem: the checkpoint's file name without ``.pt``.
        tables: state-dict prefix -> (rows, C) float32 rows this rank stores.

    Raises:
        TrainingError: the write failed (disk full, read-only folder); no file is left.
    """
    payload = {"token": token, "rank": rank, "world_size": world_size, "tables": tables}
    path = Path(directory) / shard_name(stem, token, rank, world_size)
    box: dict[str, _HashingWriter] = {}

    def write(fh: BinaryIO) -> None:
        box["w"] = _HashingWriter(fh)
        torch.save(payload, box["w"])  # type: ignore[arg-type]

    atomic_write(path, write)
    return {"rank": rank, "size": box["w"].size, "sha256": box["w"].sha.hexdigest()}


def make_manifest(token: str, keys: list[str], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest a checkpoint stores for the shard files ``entries`` (one per rank)."""
    return {"token": token, "world_size": len(entries), "keys": list(keys), "files": entries}


def check_manifest(manifest: Any, checkpoint: Path) -> dict[str, Any]:
    """``manifest`` if well formed, else :class:`CheckpointError`."""
    ok = (
        isinstance(manifest, dict)
        and isinstance(manifest.get("token"), str)
        and isinstance(manifest.get("world_size"), int)
        and isinstance(manifest.get("files"), list)
        and len(manifest["files"]) == manifest["world_size"] >= 1
        and [e.get("rank") for e in manifest["files"]] == list(range(manifest["world_size"]))
    )
    if not ok:
        raise CheckpointError(
            f"checkpoint {checkpoint} has a damaged list of table shard files; resume from an "
            "earlier checkpoint (checkpoint.resume=PATH)"
        )
    return manifest


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def read_shard(checkpoint: Path, manifest: dict[str, Any], rank: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s rows of the checkpoint at ``checkpoint``, checked against its manifest.

    Returns:
        state-dict prefix -> (rows, C) float32 rows of the ids ``rank, rank + W, ...``.

    Raises:
        CheckpointError: the file is missing, has another size or hash than recorded (truncated,
            damaged, or from another save), or is unreadable; the message names the file.
    """
    checkpoint = Path(checkpoint)
    token, world = manifest["token"], manifest["world_size"]
    entry = manifest["files"][rank]
    path = checkpoint.parent / shard_name(checkpoint.stem, token, rank, world)
    again = "resume from an earlier checkpoint (checkpoint.resume=PATH)"
    if not path.is_file():
        raise CheckpointError(
            f"table shard file {path} of checkpoint {checkpoint} is missing (the checkpoint "
            f"needs all {world} rank files); restore it or {again}"
        )
    size = path.stat().st_size
    if size != entry["size"] or _sha256(path) != entry["sha256"]:
        what = f"{size} bytes, recorded {entry['size']}" if size != entry["size"] else "SHA-256"
        raise CheckpointError(
            f"table shard file {path} does not match checkpoint {checkpoint} (other {what}: "
            f"truncated, damaged or from another save); {again}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"table shard file {path} is unreadable ({type(err).__name__}); {again}"
        ) from None
    if not isinstance(payload, dict) or payload.get("token") != token:
        raise CheckpointError(f"table shard file {path} belongs to another save; {again}")
    return dict(payload["tables"])


def _shard_files(directory: Path) -> list[tuple[Path, str, str]]:
    """(path, stem, token) of every shard file in ``directory``."""
    out = []
    for p in Path(directory).iterdir():
        if (m := _SHARD.match(p.name)) is not None:
            out.append((p, m["stem"], m["token"]))
    return out


def shard_files_of(directory: Path, stem: str, token: str) -> list[Path]:
    """The shard files of the save ``token`` of checkpoint ``<stem>.pt``."""
    return sorted(p for p, s, t in _shard_files(directory) if (s, t) == (stem, token))


def prune_shards(directory: Path, live: dict[str, str | None]) -> list[Path]:
    """Delete shard files that no checkpoint in ``directory`` can refer to; returns them.

    ``live``: checkpoint stem -> token of its current save, for the checkpoints just written
    (``None``: the save wrote no shards); their files of other tokens are stale. Files whose
    stem has no ``<stem>.pt`` are orphans of a save that died before its checkpoint was written
    (or of a pruned checkpoint). Call only when no rank is writing shards.
    """
    directory = Path(directory)
    removed = []
    for path, stem, token in _shard_files(directory):
        stale = stem in live and live[stem] != token
        if stale or not (directory / f"{stem}.pt").is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
