"""Streaming image-text samples from webdataset tar shards, with stable sample ids.

A *shard directory* holds tar files in the webdataset layout (the one open_clip, FastCLIP and
img2dataset write): the files of one sample share a key, ``00042.jpg``, ``00042.txt``,
``00042.cls``. ``python -m debiascl.data.shards index DIR`` reads every shard once and writes
``DIR/shards.json``: the shards in name order, each sample key in file order, and N. The id of a
sample is its position in that order (shard offset + position in the shard), so ids are stable
across epochs, ranks, workers and resumes, lie in [0, N), and N is known before training starts
(per-sample tables need it).

Epoch order (:func:`epoch_order`): the shards are permuted from ``(seed, epoch)`` and read whole,
in file order (write shards in shuffled sample order, as the usual tools do). The N samples of
that sequence are split into contiguous per-rank ranges (sizes differ by at most one), and each
rank's range into contiguous per-worker runs of whole batches, so every sample is read by exactly
one worker of one rank, and each worker streams a few shards sequentially (no random access).

Resume: :meth:`ShardStream.set_position` takes the number of samples this rank has consumed in
the epoch (a multiple of the batch size, as a trainer counts them) and restarts each worker at
its own offset, given that a ``DataLoader`` with ``batch_size=None`` takes batches from its
workers round-robin in order (torch's default ``in_order=True``); batch size and worker count
must be those of the interrupted run (checked).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from debiascl.data.shard_order import delivered_per_worker, epoch_order, split_range
from debiascl.errors import ConfigError, DataError, DebiasclError

__all__ = [
    "ShardIndex",
    "ShardStream",
    "delivered_per_worker",
    "epoch_order",
    "main",
    "split_range",
]

INDEX_NAME = "shards.json"
INDEX_FORMAT = "debiascl-shards/1"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")
#: words of a caption as the bag-of-words text tower splits them (lower-cased [a-z0-9] runs)
_WORD = re.compile(r"[a-z0-9]+")


def _wds() -> Any:
    try:
        from webdataset import tariterators
    except ImportError:
        raise ConfigError(
            "reading tar shards needs the webdataset package: pip install 'debiascl[shards]'"
        ) from None
    return tariterators


def _samples(path: Path) -> Any:
    """Samples (dicts of suffix -> bytes, plus ``__key__``) of one tar shard, in file order."""
    tar = _wds()
    with path.open("rb") as f:
        files = ({**item, "__url__": str(path)} for item in tar.tar_file_iterator(f))
        yield from tar.group_by_keys(files)


@dataclass
class ShardIndex:
    """Shards of a directory with their sample keys; ids are positions in this order.

    Attributes:
        root: the shard directory.
        shards: tar file names relative to ``root``, in id order.
        keys: sample keys of each shard, in file order.
        vocab: the sorted words of all ``.txt`` captions (a bag-of-words text tower's
            vocabulary without holding the captions), or None in an index without it.
    """

    root: Path
    shards: list[str]
    keys: list[list[str]]
    vocab: list[str] | None = None

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(k) for k in self.keys], dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """(S + 1,) id of the first sample of each shard, then N."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def id_of(self, shard: int, key: str) -> int:
        return int(self.offsets[shard]) + self.keys[shard].index(key)

    @classmethod
    def build(cls, root: str | Path, pattern: str = "*.tar") -> ShardIndex:
        """Read every shard matching ``pattern`` under ``root`` (sorted) and list its keys.

        Raises:
            DataError: no shard, an unreadable shard, or a key repeated across shards.
        """
        root = Path(root)
        paths = sorted(root.rglob(pattern))
        if not paths:
            raise DataError(f"no {pattern} shards under {root}; point it at a webdataset folder")
        keys: list[list[str]] = []
        seen: dict[str, str] = {}
        words: set[str] = set()
        for path in paths:
            try:
                shard_keys = []
                for s in _samples(path):
                    shard_keys.append(s["__key__"])
                    if "txt" in s:
                        words.update(_WORD.findall(s["txt"].decode("utf-8").lower()))
            except (OSError, tarfile.TarError, ValueError) as exc:
                raise DataError(f"cannot read shard {path}: {exc}; rewrite or remove it") from exc
            for key in shard_keys:
                if key in seen:
                    raise DataError(
                        f"sample key {key!r} is in both {seen[key]} and {path.name}; keys must "
                        "be unique across shards (they define the stable sample ids)"
                    )
                seen[key] = path.name
            keys.append(shard_keys)
        return cls(root, [str(p.relative_to(root)) for p in paths], keys, sorted(words))

    def save(self, path: str | Path | None = None) -> Path:
        out = Path(path) if path is not None else self.root / INDEX_NAME
        payload = {
            "format": INDEX_FORMAT,
            "num_samples": self.num_samples,
            "shards": [{"name": n, "keys": k} for n, k in zip(self.shards, self.keys, strict=True)],
            "vocab": self.vocab,
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(out)
        return out

    @classmethod
    def load(cls, root: str | Path, path: str | Path | None = None) -> ShardIndex:
        root = Path(root)
        src = Path(path) if path is not None else root / INDEX_NAME
        if not src.is_file():
            raise DataError(
                f"no shard index {src}; build it once with: python -m debiascl.data.shards "
                f"index {root}"
            )
        payload = json.loads(src.read_text())
        if payload.get("format") != INDEX_FORMAT:
            raise DataError(f"{src} is not a {INDEX_FORMAT} index; rebuild it")
        shards = payload["shards"]
        index = cls(root, [s["name"] for s in shards], [s["keys"] for s in shards])
        index.vocab = payload.get("vocab")
        if index.num_samples != payload["num_samples"]:
            raise DataError(f"{src} is inconsistent (N != sum of shard sizes); rebuild it")
        return index


class ShardStream(IterableDataset):
    """Batches of ``{"index", "image", "label", "text"}`` streamed from indexed tar shards.

    Args:
        root: shard directory with its ``shards.json`` (see module docstring).
        batch_size: samples per batch of this rank (use ``DataLoader(stream, batch_size=None)``).
        rank, world_size: this process and the number of processes (default: the process group,
            else 0 and 1).
        seed: seed of the per-epoch shard order (the same on every rank).
        image_size, channels: decoded images are resized to (channels, image_size, image_size)
            uint8.
        drop_last: drop each worker's final incomplete batch (a trainer needs equal batches).
        index: a preloaded :class:`ShardIndex` (default: loaded from ``root``).

    ``index`` of a sample is its stable id in [0, N); ``label`` is the ``.cls`` value or -1;
    ``text`` the ``.txt`` caption (empty when missing). Call :meth:`set_epoch` every epoch.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        image_size: int = 224,
        channels: int = 3,
        drop_last: bool = False,
        index: ShardIndex | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if rank is None or world_size is None:
            from debiascl import distributed as dist_utils

            rank, world_size = dist_utils.rank(), dist_utils.world_size()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        self.index = index if index is not None else ShardIndex.load(root)
        self.num_samples = self.index.num_samples
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.image_size, self.channels = seed, image_size, channels
        self.drop_last = drop_last
        # (epoch, position, position workers or -1) in shared memory: persistent loader workers
        # read the values set in the main process when each pass starts
        self._where = torch.tensor([0, 0, -1], dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._where[0])

    @property
    def position(self) -> int:
        return int(self._where[1])

    @property
    def position_workers(self) -> int | None:
        workers = int(self._where[2])
        return None if workers < 0 else workers

    # --------------------------------------------------------------- positions
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (resets the position)."""
        self._where.copy_(torch.tensor([int(epoch), 0, -1]))

    def set_position(self, samples_consumed: int, num_workers: int) -> None:
        """Resume the current epoch after ``samples_consumed`` samples of this rank.

        ``num_workers`` is the DataLoader's worker count (the same as in the interrupted run).
        """
        if samples_consumed % self.batch_size != 0 and samples_consumed != self.rank_size():
            raise DataError(
                f"resume position {samples_consumed} is not a whole number of batches of "
                f"{self.batch_size}; resume with the interrupted run's batch size"
            )
        self._where[1:] = torch.tensor([int(samples_consumed), int(num_workers)])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "batch_size": self.batch_size}

    def rank_size(self) -> int:
        start, stop = split_range(self.num_samples, self.rank, self.world_size)
        return stop - start

    def worker_batches(self, num_workers: int) -> list[tuple[int, int]]:
        """Per worker, its ``[first, last)`` batch numbers within this rank's range."""
        if self.drop_last:  # the same number of full batches on every rank
            batches = (self.num_samples // self.world_size) // self.batch_size
        else:
            batches = -(-self.rank_size() // self.batch_size)
        return [split_range(batches, w, num_workers) for w in range(num_workers)]

    def __len__(self) -> int:
        return sum(b - a for a, b in self.worker_batches(1))

    # ---------------------------------------------------------------- reading
    def _decode(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int, str]:
        from PIL import Image

        raw = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if raw is None:
            raise DataError(f"sample {sample['__key__']!r} has no image ({'/'.join(IMAGE_KEYS)})")
        try:
            img = Image.open(io.BytesIO(raw)).convert("L" if self.channels == 1 else "RGB")
        except OSError as exc:
            raise DataError(
                f"sample {sample['__key__']!r} of shard {sample.get('__url__')} has an unreadable "
                f"image ({exc}); rewrite that shard"
            ) from None
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], self.channels)
        label = int(sample["cls"].decode().strip()) if "cls" in sample else -1
        text = sample["txt"].decode("utf-8") if "txt" in sample else ""
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), label, text

    def _stream(self, start: int, stop: int, epoch: int) -> Any:
        """(id, sample) for positions [start, stop) of ``epoch``'s global sample sequence."""
        order = epoch_order(len(self.index.shards), self.seed, epoch)
        counts = self.index.counts[order]
        ends = np.cumsum(counts)
        offsets = self.index.offsets
        pos = start
        for k, shard in enumerate(order):
            first = int(ends[k] - counts[k])
            if ends[k] <= pos:
                continue
            if first >= stop:
                break
            path = self.index.root / self.index.shards[shard]
            keys = self.index.keys[shard]
            for j, sample in enumerate(_readable(path)):
                if first + j < pos:
                    continue
                if first + j >= stop:
                    break
                if j >= len(keys) or sample["__key__"] != keys[j]:
                    raise DataError(f"shard {path} changed since it was indexed; rebuild the index")
                yield int(offsets[shard]) + j, sample
                pos = first + j + 1
            if pos < min(int(ends[k]), stop):
                raise DataError(f"shard {path} is shorter than its index says; rebuild the index")

    def __iter__(self) -> Any:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        spans = self.worker_batches(workers)
        done, role = [0] * workers, worker
        epoch, position, position_workers = self.epoch, self.position, self.position_workers
        if position:
            if position_workers not in (None, workers):
                raise DataError(
                    f"the interrupted run read with {position_workers} loader workers, this "
                    f"one with {workers}; resume with the same data.num_workers"
                )
            done, nxt = delivered_per_worker([b - a for a, b in spans], position // self.batch_size)
            # The loader restarts its round-robin at worker 0: worker 0 takes the role of the
            # worker the interrupted loader would have visited next, and so on cyclically.
            role = (worker + nxt) % workers
        first_batch, last_batch = spans[role]
        first_batch += done[role]
        rank_start, rank_stop = split_range(self.num_samples, self.rank, self.world_size)
        start = rank_start + first_batch * self.batch_size
        stop = min(rank_start + last_batch * self.batch_size, rank_stop)
        batch: list[tuple[int, tuple[torch.Tensor, int, str]]] = []
        for sid, sample in self._stream(start, stop, epoch):
            batch.append((sid, self._decode(sample)))
            if len(batch) == self.batch_size:
                yield _collate(batch)
                batch = []
        if batch:
            yield _collate(batch)


def _readable(path: Path) -> Any:
    """:func:`_samples` of ``path``; a missing, truncated or corrupt file is a one-line error."""
    try:
        yield from _samples(path)
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}; restore or rewrite the file") from None


def _collate(items: list[tuple[int, tuple[torch.Tensor, int, str]]]) -> dict[str, Any]:
    return {
        "index": torch.tensor([i for i, _ in items], dtype=torch.int64),
        "image": torch.stack([x[0] for _, x in items]),
        "label": torch.tensor([x[1] for _, x in items], dtype=torch.int64),
        "text": [x[2] for _, x in items],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m debiascl.data.shards")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("index", help="write DIR/shards.json (sample keys per shard and N)")
    build.add_argument("root")
    build.add_argument("--pattern", default="*.tar")
    args = parser.parse_args(argv)
    try:
        index = ShardIndex.build(args.root, args.pattern)
        out = index.save()
    except DebiasclError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{out}: {len(index.shards)} shards, {index.num_samples} samples")


if __name__ == "__main__":
    main()
