"""Atomic writes, checkpoint files, fingerprints, RNG capture and the mid-epoch skip sampler."""

from __future__ import annotations

import os
import random
import stat

import numpy as np
import pytest
import torch

from debiascl.config import load_config
from debiascl.data.build import EpochShuffleSampler, make_loader
from debiascl.errors import CheckpointError
from debiascl.train import atomic
from debiascl.train import checkpoint as ckpt
from debiascl.train.resume import EpochStartSampler, make_resumable


# ------------------------------------------------------------------ atomic writes
def test_write_fsyncs_the_file_then_renames_then_fsyncs_the_directory(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic.atomic_write(tmp_path / "f.bin", lambda fh: (events.append("write"), fh.write(b"x")))
    assert events == ["write", "fsync-file", "rename", "fsync-dir"]
    assert (tmp_path / "f.bin").read_bytes() == b"x"


def test_interrupt_during_write_removes_the_temporary(tmp_path):
    def interrupted(fh):
        fh.write(b"abc")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(tmp_path / "x", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_new_files_get_umask_permissions_not_private_ones(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    atomic.atomic_write_text(tmp_path / "summary.json", "{}")
    mode = stat.S_IMODE((tmp_path / "summary.json").stat().st_mode)
    assert mode == 0o666 & ~atomic._UMASK


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    keep = [tmp_path / "epoch0001-step00000004.pt", tmp_path / ".hidden", tmp_path / "a.tmp"]
    stale = [tmp_path / ".epoch0001-step00000008.pt.abc123.tmp", tmp_path / ".best.pt.link.tmp"]
    for p in keep + stale:
        p.write_bytes(b"x")
    removed = atomic.remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_fault_delay_env_pauses_before_the_rename(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setenv(atomic.FAULT_DELAY_ENV, "0.01")
    monkeypatch.setattr(atomic.time, "sleep", lambda s: seen.append(s))
    atomic.atomic_write_text(tmp_path / "x", "y")
    assert seen == [0.01]


# ------------------------------------------------------------------ checkpoint files
def _state(step: int) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "fingerprint": "f", "step": step}


def test_keep_last_prunes_oldest_and_best_survives(tmp_path):
    for step, best in ((4, True), (8, False), (12, False)):
        ckpt.save_checkpoint(_state(step), tmp_path, ckpt.checkpoint_name(1, step), 2, best)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["epoch0001-step00000008.pt", "epoch0001-step00000012.pt"]
    assert ckpt.load_checkpoint(tmp_path / ckpt.BEST_NAME)["step"] == 4


def test_listing_orders_by_step_then_epoch_and_ignores_other_files(tmp_path):
    for name in [
        "epoch0001-step00000021.pt",
        "epoch0000-step00000021.pt",  # mid-epoch checkpoint at the same step: older
        "epoch0000-step00000005.pt",
        "best.pt",
        ".epoch0002-step00000030.pt.x.tmp",
        "notes.txt",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "epoch0000-step00000005.pt",
        "epoch0000-step00000021.pt",
        "epoch0001-step00000021.pt",
    ]


def test_latest_falls_back_past_unreadable_files_and_fails_when_all_are(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt.save_checkpoint(_state(4), directory, ckpt.checkpoint_name(1, 4), 5)
    ckpt.save_checkpoint(_state(8), directory, ckpt.checkpoint_name(2, 8), 5)
    (directory / ckpt.checkpoint_name(2, 8)).write_bytes(b"\x00" * 10)
    path, state = ckpt.load_for_resume("latest", tmp_path)
    assert path.name == ckpt.checkpoint_name(1, 4) and state["step"] == 4
    (directory / ckpt.checkpoint_name(1, 4)).write_bytes(b"")
    with pytest.raises(CheckpointError, match="every checkpoint .* is unreadable"):
        ckpt.load_for_resume("latest", tmp_path)


def test_fingerprint_mismatch_is_never_skipped_by_latest(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt.save_checkpoint(_state(4), directory, ckpt.checkpoint_name(1, 4), 5)
    with pytest.raises(CheckpointError, match="different config or data size"):
        ckpt.load_for_resume("latest", tmp_path, expected_fingerprint="other")


# ------------------------------------------------------------------ fingerprints
DIGITS = ("digits_simclr", ())
GLOFND = ("digits_simclr", ("negatives.name=glofnd",))
MANIFEST = ("digits_simclr", ("data.dataset=manifest", "data.manifest=m.csv"))
FMNIST = ("fmnist_simclr", ())


@pytest.mark.parametrize(
    ("override", "changes", "base_args"),
    [
        ("model.width=12", True, DIGITS),
        ("data.image_size=16", True, DIGITS),
        ("data.train_size=100", True, DIGITS),
        ("loss.temperature=0.5", True, DIGITS),
        ("negatives.name=glofnd", True, DIGITS),
        ("optim.lr=0.01", True, DIGITS),
        ("train.batch_size=32", True, DIGITS),
        ("train.epochs=7", False, DIGITS),
        ("train.max_steps=3", False, DIGITS),
        ("data.num_workers=2", False, DIGITS),
        ("data.on_bad_image=skip", False, MANIFEST),
        ("eval.knn_k=5", False, DIGITS),
        ("checkpoint.keep_last=9", False, DIGITS),
        ("negatives.glofnd.reset_on_resume=true", False, GLOFND),
        ("negatives.glofnd.lr=0.01", True, GLOFND),
        ("seed=1", True, DIGITS),  # picks the training subset and every epoch's order
        ("data.subset_seed=4", True, DIGITS),
        ("data.label_column=y", True, MANIFEST),
        ("data.root=/elsewhere", False, FMNIST),  # built-in dataset: a cache location only
        ("data.test_size=50", False, DIGITS),  # evaluation only
        ("data.test_manifest=t.csv", False, MANIFEST),
    ],
)
def test_fingerprint_covers_what_must_match(override, changes, base_args):
    # dataset-specific keys are only accepted with their dataset (a digits run refuses them)
    name, extra = base_args
    base = load_config(name, list(extra))
    other = load_config(name, [*extra, override])
    assert (ckpt.config_fingerprint(base, 100) != ckpt.config_fingerprint(other, 100)) == changes
    assert ckpt.config_fingerprint(base, 100) != ckpt.config_fingerprint(base, 101)


# ------------------------------------------------------------------ RNG
def test_rng_capture_restores_torch_numpy_and_python(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    state = ckpt.capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    want = (torch.rand(3), np.random.normal(size=3), random.random())
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.normal(size=3), random.random())
    assert torch.equal(want[0], got[0])
    assert np.array_equal(want[1], got[1])
    assert want[2] == got[2]


# ------------------------------------------------------------------ mid-epoch skip
def test_epoch_start_sampler_starts_every_iteration_of_the_resumed_epoch_there():
    base = EpochShuffleSampler(20, seed=5)
    sampler = EpochStartSampler(base)
    sampler.set_epoch(3)
    full = list(iter(base))
    sampler.set_start(3, 7)
    # A progress bar or a prefetching loader may iterate first: the position is not consumed.
    assert list(iter(sampler)) == full[7:]
    assert list(iter(sampler)) == full[7:]
    sampler.set_epoch(4)  # the next epoch starts at its beginning, in its own order
    base.set_epoch(4)
    assert list(iter(sampler)) == list(iter(base)) != full


@pytest.mark.parametrize("workers", [0, 1])
def test_make_resumable_keeps_loader_length_and_skips_whole_batches(workers):
    from tqdm.auto import tqdm

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return {"index": i}

    loader = make_loader(Rows(), 8, train=True, seed=0, num_workers=workers)
    skipper = make_resumable(loader)
    assert make_resumable(loader) is skipper
    assert len(loader) == 6
    skipper.set_epoch(1)
    full = [b["index"].tolist() for b in loader]
    skipper.set_start(1, 2 * 8)
    # tqdm.auto calls iter() on its iterable once more before the loop's own pass (item 2 of
    # issue 10): with a one-shot skip that first pass consumed it.
    assert [b["index"].tolist() for b in tqdm(loader, disable=True)] == full[2:]
    assert [b["index"].tolist() for b in loader] == full[2:]


def test_image_folder_root_names_the_data():
    a = load_config("digits_simclr", ["data.dataset=image_folder", "data.root=/data/a"])
    b = load_config("digits_simclr", ["data.dataset=image_folder", "data.root=/data/b"])
    assert ckpt.data_fingerprint(a)["data.root"] == "/data/a"
    assert ckpt.config_fingerprint(a, 10) != ckpt.config_fingerprint(b, 10)


def test_data_fingerprint_leaves_out_evaluation_only_keys():
    cfg = load_config("digits_simclr", ["data.test_size=40", "data.num_workers=2", "seed=3"])
    keys = ckpt.data_fingerprint(cfg)
    assert keys["seed"] == 3 and keys["data.dataset"] == "digits"
    assert not {f"data.{k}" for k in ckpt.EVAL_ONLY_DATA_KEYS} & set(keys)


@pytest.mark.parametrize(
    ("override", "named"),
    [("seed=1", "seed"), ("data.subset_seed=7", "data.subset_seed")],
)
def test_resume_with_other_data_settings_is_refused_naming_the_key(tmp_path, override, named):
    """Issue 10 item 15: another seed trains another subset under the same sample ids."""
    from reliability_helpers import make_trainer

    make_trainer(tmp_path, ["train.max_steps=2"]).fit(evaluate=False)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    trainer = make_trainer(tmp_path, [override, "checkpoint.resume=latest"])
    with pytest.raises(CheckpointError, match=rf"differs in: [^)]*\b{named}\b"):
        trainer.fit(evaluate=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_detection_sums_of_another_world_size_continue_from_their_total(tmp_path):
    """Per-rank (world, K) sums saved by 2 processes, resumed by 1: rank 0 takes the total, so
    the epoch's precision/recall still cover every sample; a 1-D tensor (older checkpoints)
    is taken as it is."""
    from reliability_helpers import make_trainer

    trainer = make_trainer(tmp_path)
    saved = torch.tensor([[1.0, 2.0, 0.5], [3.0, 4.0, 0.25]], dtype=torch.float64)
    assert torch.equal(trainer._local_stats(saved), torch.tensor([4.0, 6.0, 0.75]).double())
    assert torch.equal(trainer._local_stats(saved[:1]), saved[0])  # same world size: own row
    assert torch.equal(trainer._local_stats(saved[1]), saved[1])
