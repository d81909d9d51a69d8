"""Streaming webdataset shards: stable ids, exact split over ranks x workers, mid-epoch resume."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

pytest.importorskip("webdataset")

from debiascl.data.shards import ShardIndex, ShardStream, delivered_per_worker, main
from debiascl.errors import DataError
from distributed_helpers import run_distributed

SIZES = (7, 5, 9, 6)  # 27 samples: not a multiple of ranks, workers or the batch size


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, sizes: tuple[int, ...] = SIZES) -> dict[str, tuple[int, int]]:
    """Write shards of 6x6 PNGs whose pixel value and label encode the sample; key -> (px, cls)."""
    root.mkdir(parents=True, exist_ok=True)
    truth: dict[str, tuple[int, int]] = {}
    rng = np.random.default_rng(0)
    for s, size in enumerate(sizes):
        with tarfile.open(root / f"shard-{s:04d}.tar", "w") as tar:
            # keys not in sorted order inside a shard: ids must follow file order
            for j in rng.permutation(size):
                key = f"s{s}_{j:03d}"
                px, cls = (7 * len(truth)) % 256, len(truth) % 5
                buf = io.BytesIO()
                Image.new("RGB", (6, 6), (px, px, px)).save(buf, format="PNG")
                _add(tar, f"{key}.png", buf.getvalue())
                _add(tar, f"{key}.txt", f"caption of {key}".encode())
                _add(tar, f"{key}.cls", str(cls).encode())
                truth[key] = (px, cls)
    return truth


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]]]:
    root = tmp_path_factory.mktemp("shards")
    truth = write_shards(root)
    main(["index", str(root)])  # the command-line index builder
    return root, truth


def read_all(stream: ShardStream, workers: int) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def test_index_ids_are_positions_in_shard_file_order(shard_dir) -> None:
    root, truth = shard_dir
    index = ShardIndex.load(root)
    assert index.num_samples == sum(SIZES) == len(truth)
    with tarfile.open(root / "shard-0002.tar") as tar:
        file_keys = list(dict.fromkeys(m.name.split(".")[0] for m in tar.getmembers()))
    assert index.keys[2] == file_keys
    assert index.id_of(2, file_keys[3]) == SIZES[0] + SIZES[1] + 3


def test_two_ranks_two_workers_see_every_id_once_with_its_content(shard_dir) -> None:
    root, truth = shard_dir
    index = ShardIndex.load(root)
    key_of = {index.id_of(s, k): k for s, ks in enumerate(index.keys) for k in ks}
    seen: Counter[int] = Counter()
    for rank in range(2):
        stream = ShardStream(root, batch_size=4, rank=rank, world_size=2, image_size=6)
        stream.set_epoch(3)
        for batch in read_all(stream, workers=2):
            for sid, img, label, text in zip(
                batch["index"].tolist(),
                batch["image"],
                batch["label"].tolist(),
                batch["text"],
                strict=True,
            ):
                key = key_of[sid]
                assert text == f"caption of {key}"
                assert (int(img[0, 0, 0]), label) == truth[key]
                seen[sid] += 1
    assert seen == Counter(range(index.num_samples))


def test_epoch_order_changes_with_epoch_but_not_with_workers(shard_dir) -> None:
    root, _ = shard_dir

    def order(epoch: int, workers: int) -> list[int]:
        stream = ShardStream(root, batch_size=3, rank=0, world_size=1, seed=5, image_size=6)
        stream.set_epoch(epoch)
        return [i for b in read_all(stream, workers) for i in b["index"].tolist()]

    e0, e1 = order(0, 0), order(1, 0)
    assert sorted(e0) == sorted(e1) == list(range(sum(SIZES)))
    assert e0 != e1
    assert sorted(order(0, 2)) == sorted(e0)
    assert order(0, 2) == order(0, 2)  # deterministic with workers


def test_drop_last_gives_equal_full_batches_on_every_rank(shard_dir) -> None:
    root, _ = shard_dir
    lengths = []
    for rank in range(3):
        stream = ShardStream(root, 4, rank=rank, world_size=3, image_size=6, drop_last=True)
        batches = read_all(stream, workers=2)
        assert all(len(b["index"]) == 4 for b in batches)
        assert len(batches) == len(stream)
        lengths.append(len(batches))
    assert lengths == [2, 2, 2]  # 27 // 3 = 9 samples per rank -> two full batches of 4


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_continues_the_exact_sequence(shard_dir, workers: int) -> None:
    root, _ = shard_dir
    seen: Counter[int] = Counter()
    for rank in range(2):
        full = ShardStream(root, 3, rank=rank, world_size=2, seed=1, image_size=6)
        full.set_epoch(2)
        reference = [b["index"].tolist() for b in read_all(full, workers)]
        for consumed in (1, 2, 3, 4):  # interrupted after this many batches
            resumed = ShardStream(root, 3, rank=rank, world_size=2, seed=1, image_size=6)
            resumed.set_epoch(2)
            resumed.set_position(consumed * 3, num_workers=max(workers, 1))
            rest = [b["index"].tolist() for b in read_all(resumed, workers)]
            assert reference[:consumed] + rest == reference
        for ids in reference:
            seen.update(ids)
    assert seen == Counter(range(sum(SIZES)))


def test_round_robin_bookkeeping_matches_a_simulation() -> None:
    counts = [4, 4, 3]
    order = []
    for r in range(max(counts)):
        order += [w for w in range(3) if counts[w] > r]
    for k in range(sum(counts) + 1):
        done, nxt = delivered_per_worker(counts, k)
        assert done == [order[:k].count(w) for w in range(3)]
        assert nxt == ((order[k - 1] + 1) % 3 if k else 0)


def test_resume_with_other_worker_count_and_bad_shards_are_refused(tmp_path: Path) -> None:
    write_shards(tmp_path / "a", (3, 4))
    main(["index", str(tmp_path / "a")])
    stream = ShardStream(tmp_path / "a", 2, rank=0, world_size=1, image_size=6)
    stream.set_position(2, num_workers=2)
    with pytest.raises(DataError, match="num_workers"):
        read_all(stream, workers=0)
    with pytest.raises(DataError, match="batch size"):
        stream.set_position(3, num_workers=1)
    # a shard rewritten after indexing is detected, not read with wrong ids
    write_shards(tmp_path / "a", (2, 4))
    stream = ShardStream(tmp_path / "a", 2, rank=0, world_size=1, image_size=6)
    with pytest.raises(DataError, match="rebuild"):
        read_all(stream, workers=0)
    # the same key in two shards would give one sample two ids
    write_shards(tmp_path / "b", (2,))
    (tmp_path / "b" / "shard-0001.tar").hardlink_to(tmp_path / "b" / "shard-0000.tar")
    with pytest.raises(SystemExit, match="unique across shards"):
        main(["index", str(tmp_path / "b")])
    with pytest.raises(DataError, match="python -m debiascl.data.shards index"):
        ShardIndex.load(tmp_path / "b")


def _rank_ids(rank: int, world_size: int, root: str, explicit: bool = False) -> list[int]:
    where = {"rank": rank, "world_size": world_size} if explicit else {}  # else: from the group
    stream = ShardStream(root, batch_size=4, image_size=6, seed=3, **where)
    stream.set_epoch(1)
    return [i for b in read_all(stream, workers=2) for i in b["index"].tolist()]


@pytest.mark.distributed
def test_two_gloo_processes_split_the_shards_exactly(shard_dir, tmp_path: Path) -> None:
    root, _ = shard_dir
    per_rank = run_distributed(_rank_ids, world_size=2, args=(str(root),), tmp_path=tmp_path)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(sum(SIZES)))
    assert [len(x) for x in per_rank] == [14, 13]
    # the processes read exactly what the rank/world_size arguments give in one process
    assert per_rank == [_rank_ids(r, 2, str(root), explicit=True) for r in range(2)]
