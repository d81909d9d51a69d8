"""``data.dataset=shards``: the trainer streams webdataset shards (one process, 2 gloo ranks x 2
loader workers, SIGKILL + resume) with stable ids, each id once per epoch, and the same training
as a map-style dataset holding the same samples in the same order."""

from __future__ import annotations

import gc
import io
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Sampler

pytest.importorskip("webdataset")

from debiascl.cli import main as cli_main
from debiascl.compose import build_data
from debiascl.config import load_config
from debiascl.data.datasets import TensorImageDataset
from debiascl.data.images import collate_skip_none
from debiascl.errors import DataError
from debiascl.models.text import BagOfWordsTextEncoder
from debiascl.registry import DATASETS
from debiascl.train import checkpoint as ckpt
from debiascl.train.trainer import Trainer
from distributed_helpers import run_distributed
from reliability_helpers import assert_identical, checkpoint_tensors, metrics, tensors_of, wait_for
from shard_helpers import SIZES, write_digit_shards

N = sum(SIZES)
#: batch 16: 6 steps per epoch; SogCLR's u and GloFND's lambda are per-sample tables of size N
SMALL = [
    "train.batch_size=16",
    "train.epochs=2",
    "train.log_every=1000",
    "loss.name=sogclr",
    "negatives.name=glofnd",
    "negatives.alpha=0.1",
    "model.width=4",
    "model.proj_hidden_dim=32",
    "model.embed_dim=16",
]
STEPS, TOTAL = 6, 12

# the map-style twin of the shards (the same samples with the same ids), set by a test
_TWIN: dict[str, TensorImageDataset] = {}
if "shard_twin_test" not in DATASETS.names():

    @DATASETS.register("shard_twin_test")
    def _twin() -> tuple[TensorImageDataset, None]:
        return _TWIN["train"], None


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, list[str]]:
    root = tmp_path_factory.mktemp("shards")
    images, _labels, captions = write_digit_shards(root)
    return root, images, captions


def shard_args(root: Path) -> list[str]:
    return ["data.dataset=shards", f"data.shards={root}", *SMALL]


def _shard_cfg(root: Path, extra: list[str] = (), config: str = "digits_simclr") -> Any:
    return load_config(config, ["data.dataset=shards", f"data.shards={root}", *SMALL, *extra])


def _record(trainer: Trainer) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(epoch, ids, images) of every step the trainer takes."""
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    original = trainer.train_step

    def step(batch: dict[str, Any], ctx: Any) -> dict[str, float]:
        seen.append((ctx.epoch, batch["index"].clone(), batch["image"].clone()))
        return original(batch, ctx)

    trainer.train_step = step  # type: ignore[method-assign]
    return seen


def _ids_by_epoch(seen: list[tuple[int, torch.Tensor, torch.Tensor]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for epoch, ids, _ in seen:
        out.setdefault(epoch, []).extend(ids.tolist())
    return out


class _RecordedBatches(Sampler[list[int]]):
    """Batch sampler replaying given row batches per epoch (the trainer's resume interface)."""

    def __init__(self, batches: dict[int, list[list[int]]]) -> None:
        self.batches, self.epoch = batches, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, epoch: int, n: int) -> None:
        assert n == 0

    def __iter__(self):
        return iter(self.batches[self.epoch])

    def __len__(self) -> int:
        return len(self.batches[self.epoch])


def test_streamed_training_equals_map_style_training_on_the_same_order(shards, tmp_path) -> None:
    root, images, _ = shards
    streamed = Trainer(_shard_cfg(root), run_dir=tmp_path / "shards")
    seen = _record(streamed)
    streamed.fit(evaluate=False)
    by_epoch = _ids_by_epoch(seen)
    offsets = [sum(SIZES[:s]) for s in range(len(SIZES))]
    orders = []
    for epoch in (0, 1):
        ids = by_epoch[epoch]
        assert sorted(ids) == list(range(N))  # every id once per epoch
        # whole shards one after another, each in file order (a shard's ids are consecutive)
        order, pos = [], 0
        while pos < N:
            shard = offsets.index(ids[pos])
            assert ids[pos : pos + SIZES[shard]] == list(range(ids[pos], ids[pos] + SIZES[shard]))
            order.append(shard)
            pos += SIZES[shard]
        orders.append(order)
    assert orders[0] != orders[1]  # shards reshuffled per epoch
    for _, ids, batch_images in seen:  # each id carries its own image
        assert torch.equal(batch_images, images[ids])

    # map-style training on the same samples (ids = rows) in the recorded order
    _TWIN["train"] = TensorImageDataset(images)
    cfg = load_config("digits_simclr", ["data.dataset=shard_twin_test", *SMALL])
    twin = Trainer(cfg, run_dir=tmp_path / "map")
    replay = _RecordedBatches(
        {e: [ids.tolist() for ep, ids, _ in seen if ep == e] for e in by_epoch}
    )
    generator = torch.Generator()
    generator.manual_seed(0)
    twin.train_loader = DataLoader(
        _TWIN["train"], batch_sampler=replay, collate_fn=collate_skip_none, generator=generator
    )
    twin._skipper = replay  # type: ignore[assignment]
    twin.fit(evaluate=False)
    assert_identical(tensors_of(streamed), tensors_of(twin))  # weights and per-sample tables
    assert streamed.objective.state_dict().keys()  # the tables exist (sized N)


def test_image_text_with_two_workers_trains_and_evaluates_on_test_shards(shards, tmp_path) -> None:
    root, _, captions = shards
    test_root = tmp_path / "test_shards"
    write_digit_shards(test_root, (20, 20), split="test")
    cfg = _shard_cfg(
        root,
        ["data.num_workers=2", f"data.test_shards={test_root}", "eval.knn_k=5"],
        config="digits_clip",
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "clip")
    # the text tower's vocabulary from the index equals the one built from every caption
    assert trainer.model.text_encoder.vocab == BagOfWordsTextEncoder(captions).vocab
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = _record(trainer)
    summary = trainer.fit(evaluate=True)
    for epoch, ids in _ids_by_epoch(seen).items():
        assert sorted(ids) == list(range(N)), epoch
    records = metrics(tmp_path / "clip")
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # evaluated on the 40 test samples, probes fitted on the streamed training split
    assert summary["linear_probe"] and "retrieval" in summary


def _error_lines(stderr: str) -> list[str]:
    """stderr without the CLI's one-line warnings (from anywhere in the stack)."""
    return [x for x in stderr.strip().splitlines() if not x.startswith("debiascl: warning:")]


def test_without_a_test_split_training_with_evaluation_is_refused(shards, tmp_path) -> None:
    root, _, _ = shards
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli_main(
            ["train", "digits_simclr", "--run-dir", str(tmp_path / "r"), *shard_args(root)]
        )
    assert code != 0
    lines = _error_lines(err.getvalue())
    assert len(lines) == 1 and "no test split" in lines[0] and "test_shards" in lines[0]
    assert not (tmp_path / "r" / "checkpoints").exists()


def _ddp_worker(rank: int, world_size: int, root: str, run_dir: str) -> dict:
    # loader workers fork, as in a process torchrun starts (this one was spawned)
    multiprocessing.set_start_method("fork", force=True)
    trainer = Trainer(
        _shard_cfg(Path(root), ["data.num_workers=2"]), run_dir=Path(run_dir)
    )  # global batch 16: 8 per rank
    seen = _record(trainer)
    trainer.fit(evaluate=False)
    out = {"ids": _ids_by_epoch(seen), "steps": trainer.state.step}
    # A multiprocessing child exits without atexit handlers, so nothing kills the persistent
    # loader workers (they ignore SIGTERM): free the trainer (the recording closure holds it)
    # so that its loader shuts them down now.
    del trainer.train_step
    del trainer
    gc.collect()
    return out


@pytest.mark.timeout(240)
def test_two_gloo_ranks_with_two_workers_each_cover_every_id_once_per_epoch(shards, tmp_path):
    root, _, _ = shards
    results = run_distributed(
        _ddp_worker, world_size=2, args=(str(root), str(tmp_path / "run")), tmp_path=tmp_path
    )
    assert [r["steps"] for r in results] == [TOTAL, TOTAL]
    for epoch in (0, 1):
        ranks = [results[r]["ids"][epoch] for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == N // 2
        assert sorted(ranks[0] + ranks[1]) == list(range(N))


def _cli(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "debiascl.cli", "train", "digits_simclr", "--no-eval"]
    return subprocess.Popen(
        [*args, "--run-dir", str(run_dir), *overrides],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _newest_step(run_dir: Path) -> int:
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    return int(found[-1].name.split("step")[1][:8]) if found else -1


@pytest.mark.timeout(180)
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(shards, tmp_path):
    root, _, _ = shards
    overrides = [
        "data.dataset=shards", f"data.shards={root}", *SMALL, "data.num_workers=2",
        "checkpoint.every_steps=1",
    ]  # fmt: skip
    reference = Trainer(load_config("digits_simclr", overrides), run_dir=tmp_path / "ref")
    reference.fit(evaluate=False)

    run = tmp_path / "run"
    proc = _cli(run, overrides)
    wait_for(lambda: _newest_step(run) >= 8, proc)  # batch 2 of epoch 2, or a little later
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    last = ckpt.list_checkpoints(run / "checkpoints")[-1]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert 0 < state["batch"] < STEPS and state["step"] < TOTAL, "not killed mid-epoch"

    proc = _cli(run, [*overrides, "checkpoint.resume=latest"])
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    final = ckpt.list_checkpoints(run / "checkpoints")[-1]
    assert final.name == ckpt.checkpoint_name(2, TOTAL)
    assert_identical(checkpoint_tensors(final), tensors_of(reference))
    assert metrics(run) == metrics(tmp_path / "ref")


def test_brace_pattern_selects_shards_and_renumbers_ids(shards) -> None:
    root, _, _ = shards
    cfg = _shard_cfg(root)
    cfg.data.shards = str(root / "train-{0001..0002}.tar")
    data = build_data(cfg.data, seed=0)
    assert data.info.num_samples == len(data.train) == SIZES[1] + SIZES[2]


def test_missing_and_corrupt_shards_are_one_line_errors_naming_the_file(tmp_path) -> None:
    root = tmp_path / "s"
    write_digit_shards(root, (20, 20))
    missing = root / "train-0001.tar"
    missing.rename(tmp_path / "moved.tar")
    with pytest.raises(DataError, match="train-0001.tar is missing"):
        build_data(_shard_cfg(root).data, seed=0)

    (tmp_path / "moved.tar").rename(missing)
    missing.write_bytes(b"\x00garbage" * 300)  # corrupt after indexing
    for workers in (0, 1):  # in the main process, and inside a loader worker
        err = io.StringIO()
        run = ["train", "digits_simclr", "--no-eval", "--run-dir", str(tmp_path / f"r{workers}")]
        with redirect_stderr(err):
            code = cli_main([*run, *shard_args(root), f"data.num_workers={workers}"])
        lines = _error_lines(err.getvalue())
        assert code != 0 and len(lines) == 1, lines
        assert "cannot read shard" in lines[0] and str(missing) in lines[0], lines[0]


def test_debiascl_eval_of_a_shard_run_needs_and_takes_a_test_split(shards, tmp_path) -> None:
    root, _, _ = shards
    run = tmp_path / "run"
    Trainer(_shard_cfg(root), run_dir=run).fit(evaluate=False)
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli_main(["eval", str(run)])
    lines = _error_lines(err.getvalue())
    assert code != 0 and len(lines) == 1 and "data.test_shards=DIR" in lines[0], lines
    test_root = tmp_path / "test_shards"
    write_digit_shards(test_root, (12, 12), split="test")
    out = tmp_path / "eval.json"
    args = [f"data.test_shards={test_root}", "eval.references=false", "eval.knn_k=5"]
    assert cli_main(["eval", str(run), *args, "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["linear_probe"] and results["knn"]


def test_an_index_without_caption_vocabulary_is_refused_for_image_text(tmp_path) -> None:
    root = tmp_path / "s"
    write_digit_shards(root, (10,))
    index = json.loads((root / "shards.json").read_text())
    del index["vocab"]  # as an index written before the vocabulary was recorded
    (root / "shards.json").write_text(json.dumps(index))
    cfg = _shard_cfg(root, config="digits_clip")
    with pytest.raises(DataError, match="no caption vocabulary.*rebuild it"):
        build_data(cfg.data, seed=0)
    assert build_data(_shard_cfg(root).data, seed=0).info.num_samples == 10  # image_image: fine


def test_a_test_manifest_evaluates_a_shard_run(shards, tmp_path) -> None:
    from PIL import Image

    from debiascl.data.builtin import load_digits_split

    root, _, _ = shards
    images, labels = load_digits_split("test")
    rows = ["path,label"]
    for i in range(30):
        Image.fromarray(images[i, 0].numpy()).save(tmp_path / f"t{i}.png")
        rows.append(f"t{i}.png,{int(labels[i])}")
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    extra = [f"data.test_manifest={tmp_path / 'test.csv'}", "eval.references=false"]
    summary = Trainer(_shard_cfg(root, [*extra, "eval.knn_k=5"]), run_dir=tmp_path / "r").fit()
    assert summary["linear_probe"] and summary["knn"]
