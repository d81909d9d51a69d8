"""The removed-pair sample behind `debiascl explore`: exact when it fits, uniform and bounded when
it does not, the same under DDP (2 gloo processes) as in one process, merged across a resume,
written by real training, and shown by the explorer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from debiascl.cli import main
from debiascl.compose import build_data
from debiascl.config import load_config
from debiascl.negatives.removed_pairs import (
    FILE_NAME,
    RemovedPairSample,
    read_removed_pairs,
    records_to_csv,
    rows_to_records,
)
from debiascl.objectives import ContrastiveObjective, InfoNCELoss, StepContext
from debiascl.objectives.base import FalseNegativeDetector
from debiascl.pairs import PairwiseBatch, simclr_pairs
from debiascl.train.removed_pairs import save_removed_pairs
from distributed_helpers import run_distributed

THRESHOLD = 0.2


class ThresholdDetector(FalseNegativeDetector):
    """Removes every negative more similar than a fixed threshold (deterministic, rank-free)."""

    def forward(self, batch: PairwiseBatch, ctx: StepContext) -> torch.Tensor:
        return ~(batch.sim.detach() > THRESHOLD)


def _batch(seed: int, b: int = 8, d: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    ids = torch.randperm(100, generator=g)[:b]
    labels = torch.randint(0, 3, (b,), generator=g)
    return z1, z2, ids, labels


def _reference(z1, z2, ids, labels) -> set[tuple]:
    """Every removed (anchor id, candidate id, similarity, agree) by plain float64 loops."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    all_ids, all_labels = torch.cat([ids, ids]), torch.cat([labels, labels])
    b = len(ids)
    out = set()
    for i in range(2 * b):
        for j in range(2 * b):
            if j == i or j == (i + b) % (2 * b):
                continue
            s = float(z[i] @ z[j])
            if s > THRESHOLD:
                agree = int(all_labels[i] == all_labels[j])
                out.add((int(all_ids[i]), int(all_ids[j]), round(s, 5), agree))
    return out


def _as_set(records: list[dict]) -> set[tuple]:
    return {
        (r["anchor_id"], r["candidate_id"], round(r["similarity"], 5), r["labels_agree"])
        for r in records
    }


def test_sample_holds_every_removed_pair_when_it_fits() -> None:
    z1, z2, ids, labels = _batch(0)
    batch = simclr_pairs(z1, z2, ids, labels)
    sample = RemovedPairSample(capacity=1000, seed=0)
    sample.update(batch, ThresholdDetector()(batch, StepContext()), epoch=2)
    records = rows_to_records(sample.gathered())
    ref = _reference(z1, z2, ids, labels)
    assert len(ref) > 10 and len(records) == len(ref)
    assert _as_set(records) == ref
    assert {r["epoch"] for r in records} == {3} and {r["direction"] for r in records} == {"image"}


def test_sample_is_bounded_uniform_and_seeded() -> None:
    z1, z2, ids, labels = _batch(1)
    batch = simclr_pairs(z1, z2, ids, labels)
    keep = ThresholdDetector()(batch, StepContext())
    total = int((batch.neg_mask & ~keep).sum())
    capacity, trials = 5, 1500
    counts: dict[tuple, int] = {}
    for seed in range(trials):
        sample = RemovedPairSample(capacity, seed)
        # offered in two steps (as two batches would be): the merge must stay uniform
        half = keep.clone()
        half[: len(half) // 2] = True  # first step: only the lower half's removals
        sample.update(batch, half, epoch=0)
        rest = keep.clone()
        rest[len(rest) // 2 :] = True
        sample.update(batch, rest, epoch=0)
        records = rows_to_records(sample.gathered())
        assert len(records) == capacity
        for key in _as_set(records):
            counts[key] = counts.get(key, 0) + 1
    assert len(counts) == total  # every removed pair can be drawn ...
    expected = trials * capacity / total  # ... and each with probability capacity / total
    sd = (trials * (capacity / total) * (1 - capacity / total)) ** 0.5
    assert all(abs(c - expected) < 5 * sd for c in counts.values()), (expected, counts)
    a, b = RemovedPairSample(capacity, 7), RemovedPairSample(capacity, 7)
    for s in (a, b):
        s.update(batch, keep, epoch=0)
    assert torch.equal(a.gathered(), b.gathered())


def _objective() -> ContrastiveObjective:
    obj = ContrastiveObjective("image_image", InfoNCELoss(), ThresholdDetector(), num_samples=100)
    obj.removed_pairs = RemovedPairSample(capacity=1000, seed=0)
    return obj


def _ddp_worker(rank: int, world: int, capacity: int) -> list[dict]:
    z1, z2, ids, labels = _batch(2)
    b = len(ids) // world
    local = slice(rank * b, (rank + 1) * b)
    obj = _objective()
    obj.removed_pairs = RemovedPairSample(capacity, seed=0)
    ctx = StepContext(epoch=0, training=True)
    obj(z1[local], z2[local], ids[local], labels[local], ctx=ctx)
    return rows_to_records(obj.removed_pairs.gathered())


@pytest.mark.distributed
def test_ddp_sample_equals_one_process(tmp_path: Path) -> None:
    z1, z2, ids, labels = _batch(2)
    obj = _objective()
    obj(z1, z2, ids, labels, ctx=StepContext(epoch=0, training=True))
    single = _as_set(rows_to_records(obj.removed_pairs.gathered()))
    assert single == _reference(z1, z2, ids, labels)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    full = run_distributed(_ddp_worker, world_size=2, args=(1000,), tmp_path=tmp_path / "a")
    assert _as_set(full[0]) == single and _as_set(full[1]) == single
    small = run_distributed(_ddp_worker, world_size=2, args=(6,), tmp_path=tmp_path / "b")
    assert len(small[0]) == 6 and _as_set(small[0]) <= single
    assert small[0] == small[1]  # every rank holds the same global sample


def test_resumed_run_keeps_earlier_epochs(tmp_path: Path) -> None:
    old = [
        {"epoch": e, "direction": "image", "anchor_id": e, "candidate_id": 50 + e,
         "similarity": 0.9, "labels_agree": 1, "key": k}
        for e, k in ((1, 0.001), (2, 0.002), (3, 0.5))
    ]  # fmt: skip
    (tmp_path / FILE_NAME).write_text(records_to_csv(old))
    z1, z2, ids, labels = _batch(3)
    batch = simclr_pairs(z1, z2, ids, labels)
    sample = RemovedPairSample(capacity=4, seed=0)
    sample.update(batch, ThresholdDetector()(batch, StepContext()), epoch=2)  # resumed in epoch 3
    new = rows_to_records(sample.gathered())
    save_removed_pairs(sample, tmp_path)
    got = read_removed_pairs(tmp_path / FILE_NAME)
    # the bottom-4 keys of (old epochs 1-2) + (new rows); old epoch 3 is redone, so dropped
    pool = sorted([*old[:2], *new], key=lambda r: r["key"])[:4]
    assert sorted(r["key"] for r in got) == pytest.approx(sorted(r["key"] for r in pool))
    assert [r["similarity"] for r in got] == sorted((r["similarity"] for r in got), reverse=True)


def test_real_run_writes_pairs_and_explorer_shows_them(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = ["negatives.name=fnc", "negatives.alpha=0.05", "train.epochs=1",
            "train.removed_pairs_sample=40"]  # fmt: skip
    assert main(["train", "digits_simclr", *args, "--run-dir", str(run), "--no-eval"]) == 0
    pairs = read_removed_pairs(run / FILE_NAME)
    assert len(pairs) == 40 and {p["epoch"] for p in pairs} == {1}
    cfg = load_config(str(run / "config.yaml"))
    train = build_data(cfg.data, cfg.seed).train
    label_of = dict(zip(train.ids.tolist(), train.labels.tolist(), strict=True))
    for p in pairs:  # the recorded agreement is the dataset's truth
        assert p["labels_agree"] == int(label_of[p["anchor_id"]] == label_of[p["candidate_id"]])
        assert p["anchor_id"] != p["candidate_id"]
    capsys.readouterr()
    assert main(["explore", str(run), "--limit", "25"]) == 0
    assert "explorer.html" in capsys.readouterr().out
    page = (run / "explorer.html").read_text()
    assert page.count('class="thumb"') == 50 and "<script" not in page
    with (run / "explorer.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    top = sorted(pairs, key=lambda p: -p["similarity"])[:25]
    assert [int(r["anchor_id"]) for r in rows] == [p["anchor_id"] for p in top]
    assert [int(r["candidate_id"]) for r in rows] == [p["candidate_id"] for p in top]
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert rows[0]["anchor_label"] in names + [str(i) for i in range(10)]


def test_explore_without_pairs_is_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["explore", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed_pairs.csv" in err


def test_real_resume_keeps_the_first_process_pairs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["digits_simclr", "negatives.name=fnc", "negatives.alpha=0.05",
            "train.removed_pairs_sample=60", "--run-dir", str(run), "--no-eval"]  # fmt: skip
    assert main(["train", *args, "train.epochs=1"]) == 0
    first = {
        (p["anchor_id"], p["candidate_id"], p["key"]) for p in read_removed_pairs(run / FILE_NAME)
    }
    assert main(["train", *args, "train.epochs=2", "--resume", "latest"]) == 0
    final = read_removed_pairs(run / FILE_NAME)
    assert len(final) == 60 and {p["epoch"] for p in final} == {1, 2}
    # epoch-1 rows can only come from the first process's file (the resumed one began at 2)
    kept = {(p["anchor_id"], p["candidate_id"], p["key"]) for p in final if p["epoch"] == 1}
    assert kept and kept <= first
    # and they are exactly the first file's rows whose keys beat the final cut-off
    cut = max(p["key"] for p in final)
    assert kept == {r for r in first if r[2] <= cut}
    # the resumed process drew fresh keys, not a replay of the first process's key stream
    assert not {p["key"] for p in final if p["epoch"] == 2} & {r[2] for r in first}
