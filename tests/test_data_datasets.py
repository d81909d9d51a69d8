"""TensorImageDataset items and id validation; loaders (batch mapping, drop_last, sharding)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from debiascl.data.build import EpochShuffleSampler, make_loader
from debiascl.data.datasets import TensorImageDataset, validate_ids
from debiascl.errors import DataError


def _images(n: int, c: int = 1, s: int = 8) -> torch.Tensor:
    # Image i is filled with the value i, so a batch's images identify their rows.
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, c, s, s).contiguous()


def test_item_layout_with_everything() -> None:
    ds = TensorImageDataset(
        _images(4),
        labels=[0, 1, -1, 1],
        texts=["a", "b", "c", "d"],
        attrs=[[0, 1], [1, -1], [0, 0], [-1, 2]],
        ids=[7, 2, 5, 0],
        num_samples=10,
        attr_names=["sex", "race"],
        class_names=["x", "y"],
    )
    item = ds[1]
    assert set(item) == {"index", "image", "label", "text", "attrs"}
    assert item["index"] == 2 and item["label"] == 1 and item["text"] == "b"
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, 8, 8)
    assert int(item["image"][0, 0, 0]) == 1
    assert item["attrs"].dtype == torch.int64 and item["attrs"].tolist() == [1, -1]
    info = ds.info()
    assert info.num_samples == 10
    assert info.labels.tolist() == [1, -1, 1, -1, -1, -1, -1, 0, -1, -1]
    assert info.texts[7] == "a" and info.texts[0] == "d" and info.texts[3] == ""


def test_minimal_item_has_label_minus_one() -> None:
    ds = TensorImageDataset(_images(3))
    assert set(ds[0]) == {"index", "image", "label"}
    assert ds[2]["label"] == -1 and ds[2]["index"] == 2
    assert ds.num_samples == 3 and ds.info().labels is None


@pytest.mark.parametrize(
    ("ids", "num_samples", "match"),
    [
        ([0, 1, 1], None, "distinct"),
        ([0, 1, 5], 5, r"\[0, 5\)"),
        ([-1, 0, 1], None, r"\[0, "),
        ([0.0, 1.0, 2.0], None, "integers"),
        ([0, 1], None, "2 sample ids for 3"),
    ],
)
def test_bad_ids(ids: list, num_samples: int | None, match: str) -> None:
    with pytest.raises(DataError, match=match):
        TensorImageDataset(_images(3), ids=torch.tensor(ids), num_samples=num_samples)


def test_validate_ids_accepts_sparse_ids() -> None:
    validate_ids(torch.tensor([3, 9, 0]), 10)
    with pytest.raises(DataError):
        validate_ids(torch.tensor([3, 10]), 10)


def test_bad_images_and_metadata() -> None:
    with pytest.raises(DataError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        TensorImageDataset(torch.zeros(2, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError, match="texts"):
        TensorImageDataset(_images(3), texts=["a"])
    with pytest.raises(DataError, match="attrs"):
        TensorImageDataset(_images(3), attrs=torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(DataError, match="class name"):
        TensorImageDataset(_images(3), labels=[0, 1, 2], class_names=["a", "b"])


def test_select_reindexes() -> None:
    ds = TensorImageDataset(_images(6), labels=[0, 1, 2, 0, 1, 2], texts=list("abcdef"))
    sub = ds.select([4, 1, 5])
    assert len(sub) == 3 and sub.num_samples == 3
    assert [sub[i]["index"] for i in range(3)] == [0, 1, 2]
    assert [int(sub[i]["image"][0, 0, 0]) for i in range(3)] == [4, 1, 5]
    assert sub.texts == ["e", "b", "f"] and sub.labels.tolist() == [1, 1, 2]
    assert len(ds) == 6  # the original is untouched


def test_loader_batch_mapping_and_drop_last() -> None:
    ds = TensorImageDataset(
        _images(10),
        labels=list(range(10)),
        texts=[f"t{i}" for i in range(10)],
        attrs=torch.arange(10).view(10, 1),
    )
    loader = make_loader(ds, 4, train=True, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 2  # 10 // 4, the last 2 rows dropped
    for b in batches:
        assert set(b) == {"index", "image", "label", "text", "attrs"}
        assert b["index"].shape == (4,) and b["index"].dtype == torch.int64
        assert b["image"].shape == (4, 1, 8, 8) and b["image"].dtype == torch.uint8
        assert b["attrs"].shape == (4, 1)
        assert isinstance(b["text"], list) and len(b["text"]) == 4
        assert b["label"].tolist() == b["index"].tolist() == b["image"][:, 0, 0, 0].long().tolist()
    seen = torch.cat([b["index"] for b in batches])
    assert seen.unique().numel() == 8
    eval_batches = list(make_loader(ds, 4, train=False, seed=0))
    assert [len(b["index"]) for b in eval_batches] == [4, 4, 2]
    assert torch.cat([b["index"] for b in eval_batches]).tolist() == list(range(10))


def test_epoch_sampler_is_seeded_and_changes_per_epoch() -> None:
    s = EpochShuffleSampler(50, seed=3)
    first = list(s)
    assert sorted(first) == list(range(50))
    assert list(EpochShuffleSampler(50, seed=3)) == first
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(50))
    s.set_epoch(0)
    assert list(s) == first  # resumable: an epoch's order depends only on (seed, epoch)
    assert list(EpochShuffleSampler(50, seed=4)) != first


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shard_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        ds = TensorImageDataset(_images(23), labels=list(range(23)))
        loader = make_loader(ds, 4, train=True, seed=11)
        result = {}
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            result[epoch] = [b["index"].tolist() for b in loader]
        torch.save(
            {"result": result, "sampler": type(loader.sampler).__name__},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_distributed_loader_shards_and_drops_last(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_shard_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert all(o["sampler"] == "DistributedSampler" for o in outs)
    for epoch in (0, 1):
        per_rank = [o["result"][epoch] for o in outs]
        # 23 rows -> 11 per rank (drop_last) -> 2 full batches of 4 per rank, same on both.
        assert [len(batches) for batches in per_rank] == [2, 2]
        assert all(len(b) == 4 for batches in per_rank for b in batches)
        ids = [i for batches in per_rank for b in batches for i in b]
        assert len(set(ids)) == len(ids) == 16  # disjoint shards
    assert outs[0]["result"][0] != outs[0]["result"][1]  # set_epoch reshuffles
