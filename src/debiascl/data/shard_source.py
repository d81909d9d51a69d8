"""Indexed webdataset shards as a training source (``data.dataset=shards``).

:mod:`debiascl.data.shards` reads the shards; this module makes them a source of the
:data:`~debiascl.registry.DATASETS` registry that the trainer streams from:

* :func:`open_shards` resolves ``data.shards`` (a folder with ``shards.json``, or a brace pattern
  of tar files listed in their folder's index) and checks that every shard file exists;
* :class:`ShardSource` is the training split: N and the stable ids come from the index, nothing
  is decoded before training; :func:`make_stream_loader` turns it into a ``DataLoader`` over a
  :class:`~debiascl.data.shards.ShardStream` (this rank's share, whole batches, a new pass per
  epoch), and :class:`StreamStart` gives that loader the trainer's mid-epoch resume position;
* :func:`load_shard_split` reads a (small) test split of shards into memory as a map-style
  dataset for evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from debiascl.data.datasets import TensorImageDataset
from debiascl.data.info import DatasetInfo
from debiascl.data.shards import INDEX_NAME, ShardIndex, ShardStream, _readable
from debiascl.errors import ConfigError, DataError


def open_shards(spec: str) -> ShardIndex:
    """The index of ``spec``: a shard folder (its ``shards.json``) or a brace pattern such as
    ``/data/cc3m/{00000..00099}.tar`` (the matched shards of their folder's index, ids renumbered
    over them in index order).

    Raises:
        DataError: no index, a pattern shard the index does not list, or a missing shard file
            (named).
    """
    if Path(spec).is_dir():
        index = ShardIndex.load(spec)
    else:
        from braceexpand import braceexpand

        paths = [Path(p) for p in braceexpand(spec)]
        parents = {str(p.parent.resolve()) for p in paths}
        root = Path(os.path.commonpath(sorted(parents)))
        full = ShardIndex.load(root)
        wanted = {str(p.resolve().relative_to(root)) for p in paths}
        unknown = sorted(wanted - set(full.shards))
        if unknown:
            raise DataError(
                f"shard {root / unknown[0]} is not in {root / INDEX_NAME}; rebuild the index: "
                f"python -m debiascl.data.shards index {root}"
            )
        keep = [i for i, name in enumerate(full.shards) if name in wanted]
        index = ShardIndex(
            root, [full.shards[i] for i in keep], [full.keys[i] for i in keep], full.vocab
        )
    for name in index.shards:
        if not (index.root / name).is_file():
            raise DataError(
                f"shard {index.root / name} is missing (listed in {index.root / INDEX_NAME}); "
                "restore it or rebuild the index"
            )
    if index.num_samples == 0:
        raise DataError(f"the shards of {spec} hold no samples")
    return index


class ShardSource:
    """The training split of ``data.dataset=shards``, read as a stream (never held in memory).

    Args:
        index: the shards and their sample keys (:func:`open_shards`); ids are positions in it.
        channels, image_size: images are decoded to uint8 (channels, image_size, image_size).

    ``len()`` is N; :meth:`info` has N and no per-sample texts or labels (they are not read
    ahead); :attr:`corpus` is the captions' vocabulary from the index (a bag-of-words tower's).
    """

    streaming = True
    num_skipped = 0
    class_names = None

    def __init__(self, index: ShardIndex, channels: int, image_size: int) -> None:
        self.index, self.channels, self.image_size = index, channels, image_size
        self.attr_names: list[str] = []
        self.attr_vocab: dict[str, dict[str, int]] = {}

    @property
    def num_samples(self) -> int:
        return self.index.num_samples

    def __len__(self) -> int:
        return self.index.num_samples

    @property
    def corpus(self) -> list[str] | None:
        return self.index.vocab

    def info(self) -> DatasetInfo:
        return DatasetInfo(num_samples=self.num_samples)

    def stream(self, batch_size: int, seed: int, train: bool = True) -> ShardStream:
        """For training (``train``), this process's :class:`ShardStream` (rank and world size
        of the process group): full batches of ``batch_size``, as many on every rank. Otherwise
        one pass over every sample in this process (evaluation features)."""
        whole = {} if train else {"rank": 0, "world_size": 1}
        return ShardStream(
            self.index.root,
            batch_size,
            seed=seed,
            image_size=self.image_size,
            channels=self.channels,
            drop_last=train,
            index=self.index,
            **whole,
        )


def make_stream_loader(
    source: ShardSource, batch_size: int, seed: int, num_workers: int = 0, train: bool = True
) -> DataLoader:
    """A loader over ``source``'s stream: for training, batches of ``batch_size`` for this rank
    (:meth:`ShardSource.stream`); otherwise every sample once, in this process.

    Workers persist across epochs: each pass reads the stream's epoch and resume position from
    shared memory when it starts. ``len()`` is the number of batches per epoch.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        source.stream(batch_size, seed, train),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=generator,
    )


class StreamStart:
    """The resume handle of a stream loader, used like
    :class:`~debiascl.train.resume.EpochStartSampler`: :meth:`set_epoch` starts an epoch,
    :meth:`set_start` moves every later pass of that epoch past its first ``n`` samples."""

    def __init__(self, loader: DataLoader) -> None:
        self.stream: ShardStream = loader.dataset  # type: ignore[assignment]
        self.num_workers = loader.num_workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.stream.epoch != self.epoch:
            self.stream.set_epoch(self.epoch)

    def set_start(self, epoch: int, n: int) -> None:
        if n < 0:
            raise ValueError(f"start position must be >= 0, got {n}")
        if int(epoch) == self.epoch:
            self.stream.set_position(int(n), max(1, self.num_workers))

    def start(self) -> int:
        return self.stream.position


def load_shard_split(spec: str, channels: int, image_size: int) -> TensorImageDataset:
    """All samples of the shards ``spec`` (see :func:`open_shards`) in memory, in id order: an
    evaluation split (keep it small). Labels from ``.cls`` (-1 where missing), texts from
    ``.txt`` when every sample has one.

    Raises:
        DataError: a missing or unreadable shard (named).
    """
    index = open_shards(spec)
    decoder = ShardStream(
        index.root, 1, rank=0, world_size=1, image_size=image_size, channels=channels, index=index
    )
    images: list[torch.Tensor] = []
    labels: list[int] = []
    texts: list[str | None] = []
    for name in index.shards:
        for sample in _readable(index.root / name):
            image, label, _ = decoder._decode(sample)
            images.append(image)
            labels.append(label)
            texts.append(sample["txt"].decode("utf-8") if "txt" in sample else None)
    if len(images) != index.num_samples:
        raise DataError(f"the shards of {spec} changed since they were indexed; rebuild the index")
    all_texts = None if any(t is None for t in texts) else [str(t) for t in texts]
    return TensorImageDataset(torch.stack(images), np.asarray(labels), texts=all_texts)


def check_streamable(options: dict[str, Any]) -> None:
    """Refuse settings that need the whole training split in memory (subsets, class filters).

    ``options``: config key -> value, each refused unless it is None, empty or 1.0."""
    for key, value in options.items():
        if value not in (None, [], 1.0):
            raise ConfigError(
                f"{key} needs the whole training split in memory and is not available with "
                "data.dataset=shards (a stream); write the subset as its own shards instead"
            )
