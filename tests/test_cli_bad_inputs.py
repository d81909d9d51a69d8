"""Bad-input catalogue (docs/reliability.md): every case runs ``debiascl.cli.main`` in-process
against a copy of a finished run directory and checks the exit code, that stderr is one line
without a traceback naming the problem, and that no existing file of the run was changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from debiascl.cli import main
from debiascl.train import checkpoint as ckpt
from debiascl.train.trainer import Trainer

TINY = [
    "data.train_size=128",
    "train.batch_size=32",
    "train.epochs=2",
    "model.width=4",
    "model.proj_hidden_dim=32",
    "model.embed_dim=16",
]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (TensorBoard event files excluded: each run adds one)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "tfevents" not in p.name
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "digits_simclr", "--run-dir", str(run_dir), "--no-eval", *TINY]) == 0
    assert (run_dir / "summary.json").is_file()
    return run_dir


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A private copy of the finished run (cases may try to write into it)."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = int(exit_.code)
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("debiascl: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def train(run_dir: Path, *extra: str) -> list[str]:
    return ["train", "digits_simclr", "--run-dir", str(run_dir), "--no-eval", *TINY, *extra]


def assert_untouched(before: dict[str, str], run_dir: Path, allow: tuple[str, ...] = ()) -> None:
    """Every file that existed is byte-identical (``allow``: files a continued run rewrites)."""
    after = snapshot(run_dir)
    for name, digest in before.items():
        if name in allow:
            continue
        assert after.get(name) == digest, f"{name} was changed or removed"


# ------------------------------------------------------------------ config and CLI arguments
CONFIG_CASES = {
    "unknown_key": (["train.epoch=3"], "unknown key 'train.epoch'"),
    "wrong_type": (["train.batch_size=abc"], "train.batch_size"),
    "out_of_range": (["loss.temperature=-1"], "loss.temperature"),
    "override_without_equals": (["nonsense"], "must look like section.key=value"),
    "override_into_value": (["seed.x=1"], "'seed' is not a section"),
    "unknown_loss": (["loss.name=nosuch"], "unknown loss 'nosuch'"),
    "unknown_detector": (["negatives.name=nosuch"], "unknown false-negative detector"),
    "batch_larger_than_data": (["data.train_size=16"], "smaller than one batch"),
    "train_size_too_big": (["data.train_size=99999"], "exceeds"),
    "cuda_without_gpu": (["train.device=cuda"], "no CUDA device"),
    "manifest_not_set": (["data.dataset=manifest"], "data.manifest"),
    "manifest_missing_file": (
        ["data.dataset=manifest", "data.manifest=/nonexistent/train.csv"],
        "/nonexistent/train.csv",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_values(capsys, run_dir, case):
    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    overrides, needle = CONFIG_CASES[case]
    before = snapshot(run_dir)
    argv = ["train", "digits_simclr", *TINY, *overrides, "--run-dir", str(run_dir)]
    code, err = cli(capsys, [*argv, "--no-eval", "--resume", "latest"])
    assert code == 2
    assert_one_line_error(err, needle)
    assert_untouched(before, run_dir)


def test_config_file_missing(capsys, run_dir):
    before = snapshot(run_dir)
    code, err = cli(capsys, ["train", "no_such_config", "--run-dir", str(run_dir)])
    assert code == 2
    assert_one_line_error(err, "neither a file nor a built-in config")
    assert_untouched(before, run_dir)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train: [1, 2\n", "is not valid YAML"),
        ("- 1\n- 2\n", "must contain a mapping"),
    ],
)
def test_config_file_malformed(capsys, run_dir, tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = snapshot(run_dir)
    code, err = cli(capsys, ["train", str(path), "--run-dir", str(run_dir)])
    assert code == 2
    assert_one_line_error(err, needle)
    assert_untouched(before, run_dir)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "digits_simclr", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["train"], "required: config"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_bad_cli_arguments(capsys, argv, needle):
    """argparse errors: a usage synopsis, then one error line; exit 2, no traceback."""
    code, err = cli(capsys, argv)
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[0].startswith("usage: ")
    assert needle in err.strip().splitlines()[-1]


def test_eval_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    code, err = cli(capsys, ["eval", str(tmp_path)])
    assert code == 2
    assert_one_line_error(err, "is not a run directory")


# ------------------------------------------------------------------ checkpoints and resume
def test_fresh_run_into_a_run_directory_is_refused(capsys, run_dir):
    before = snapshot(run_dir)
    code, err = cli(capsys, train(run_dir))
    assert code == 2
    assert_one_line_error(err, "already holds checkpoints", "--resume latest")
    assert_untouched(before, run_dir)


def test_overwrite_starts_over(capsys, run_dir):
    old = ckpt.list_checkpoints(run_dir / "checkpoints")
    code, _ = cli(capsys, train(run_dir, "checkpoint.overwrite=true", "train.epochs=1"))
    assert code == 0
    assert ckpt.list_checkpoints(run_dir / "checkpoints")[-1].name == "epoch0001-step00000004.pt"
    assert not old[-1].exists()  # epoch0002-step00000008.pt of the earlier run was deleted


@pytest.mark.parametrize(
    ("resume", "needle"),
    [("latest", "no checkpoint in"), ("best", "does not exist"), ("/no/such.pt", "does not exist")],
)
def test_resume_target_missing(capsys, tmp_path, resume, needle):
    empty = tmp_path / "empty"
    code, err = cli(capsys, train(empty, "--resume", resume))
    assert code == 2
    assert_one_line_error(err, needle)
    assert not (empty / "config.yaml").exists()  # nothing written for a refused resume


def test_resume_from_a_directory(capsys, run_dir):
    before = snapshot(run_dir)
    code, err = cli(capsys, train(run_dir, "--resume", str(run_dir / "checkpoints")))
    assert code == 2
    assert_one_line_error(err, "is a directory")
    assert_untouched(before, run_dir)


def _damaged_checkpoint(run_dir: Path, kind: str) -> Path:
    good = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    bad = run_dir.parent / f"{kind}.pt"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("this is not a checkpoint\n")
    elif kind == "plain_tensor":
        torch.save({"weights": torch.zeros(3)}, bad)
    elif kind == "code_object":
        # Unpickling this would import and call a function: weights_only refuses it.
        torch.save({"model": {}, "fingerprint": "x", "hook": np.random.default_rng}, bad)
    return bad


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("truncated", "is unreadable"),
        ("empty", "is unreadable"),
        ("text", "is unreadable"),
        ("plain_tensor", "is not a debiascl checkpoint"),
        ("code_object", "is unreadable"),
    ],
)
def test_damaged_checkpoint_file(capsys, run_dir, kind, needle):
    bad = _damaged_checkpoint(run_dir, kind)
    before = snapshot(run_dir)
    code, err = cli(capsys, train(run_dir, "--resume", str(bad)))
    assert code == 2
    assert_one_line_error(err, needle, str(bad))
    assert_untouched(before, run_dir)


def test_latest_skips_an_unreadable_newest_checkpoint(capsys, caplog, run_dir):
    """A damaged newest file (e.g. disk corruption): `latest` warns and uses the one before."""
    files = ckpt.list_checkpoints(run_dir / "checkpoints")
    files[-1].write_bytes(b"garbage")
    code, err = cli(capsys, train(run_dir, "--resume", "latest", "train.epochs=3"))
    assert code == 0, err
    assert any(
        files[-1].name in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.width=8"], "differs in: model"),
        (["data.train_size=96"], "differs in: data.train_size, num_samples"),
        (["loss.name=sogclr"], "differs in: loss"),
        (["optim.name=sgd"], "differs in: optim"),
        (["optim.lr=0.1"], "differs in: optim"),
        (["train.batch_size=64"], "differs in: batch_size"),
    ],
)
def test_checkpoint_from_another_config(capsys, run_dir, overrides, needle):
    before = snapshot(run_dir)
    code, err = cli(capsys, train(run_dir, "--resume", "latest", *overrides))
    assert code == 2
    assert_one_line_error(err, "different config or data size", needle)
    assert_untouched(before, run_dir)


# ------------------------------------------------------------------ training guards
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code, err = cli(capsys, train(run_dir, "optim.lr=1e30", "checkpoint.every_steps=1"))
    assert code == 3
    # Step 1 (lr 1e30) makes the weights huge; the loss of step 2 is NaN.
    good = run_dir / "checkpoints" / "epoch0000-step00000001.pt"
    assert_one_line_error(err, "non-finite loss at epoch 1 step 2", good.name)
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == [good.name]
    state = ckpt.load_checkpoint(good)
    assert state["step"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (run_dir / "summary.json").exists()


def test_nonfinite_skip_keeps_parameters_finite(tmp_path):
    from debiascl.config import load_config

    cfg = load_config("digits_simclr", [*TINY, "train.on_nonfinite=skip", "train.max_steps=3"])
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    original = trainer.objective.forward

    def poisoned(a, b, ids, labels=None, logit_scale=10.0, ctx=None, **kwargs):
        out = original(a, b, ids, labels, logit_scale, ctx, **kwargs)
        if ctx is not None and ctx.step == 1:
            out.loss = out.loss * float("nan")
        return out

    trainer.objective.forward = poisoned
    trainer.fit(evaluate=False)
    assert trainer.state.step == 3
    assert trainer.progress.nonfinite == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_out_of_memory_names_the_step(capsys, run_dir, monkeypatch):
    def oom(self, batch, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    before = snapshot(run_dir)
    monkeypatch.setattr(Trainer, "train_step", oom)
    code, err = cli(capsys, train(run_dir, "--resume", "latest", "train.epochs=3"))
    assert code == 3
    assert_one_line_error(err, "out of memory at epoch 3 step 9", "lower train.batch_size")
    assert_untouched(before, run_dir, allow=("config.yaml",))


def test_sigterm_saves_and_exits_143(capsys, run_dir, monkeypatch):
    real_step = Trainer.train_step

    def step(self, batch, ctx):
        out = real_step(self, batch, ctx)
        if ctx.step == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    before = snapshot(run_dir)
    monkeypatch.setattr(Trainer, "train_step", step)
    code, err = cli(capsys, train(run_dir, "--resume", "latest", "train.epochs=3"))
    assert code == 128 + signal.SIGTERM
    assert_one_line_error(err, "stopped by SIGTERM", "--resume latest")
    assert (run_dir / "checkpoints" / "epoch0002-step00000010.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    # keep_last=2: the newest earlier checkpoint survives next to the new one
    names = [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")]
    assert names == ["epoch0002-step00000008.pt", "epoch0002-step00000010.pt"]
    assert before["summary.json"] == snapshot(run_dir)["summary.json"]


# ------------------------------------------------------------------ data: manifests and images
@pytest.fixture
def manifest_dir(tmp_path) -> Path:
    """40 8x8 PNGs in two classes plus one corrupt PNG (row 17)."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(41):
        path = root / "img" / f"{i:03d}.png"
        if i == 17:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"corrupt" * 10)
        else:
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
        paths.append(f"img/{i:03d}.png")
        labels.append(i % 2)
    pd.DataFrame({"path": paths, "label": labels}).to_csv(root / "train.csv", index=False)
    return root


def _manifest_train(run_dir: Path, manifest: Path, *extra: str) -> list[str]:
    return [
        "train",
        "digits_simclr",
        "--run-dir",
        str(run_dir),
        "--no-eval",
        "data.dataset=manifest",
        f"data.manifest={manifest}",
        "train.batch_size=8",
        "train.epochs=2",
        "model.width=4",
        *extra,
    ]


def test_corrupt_image_is_an_error_naming_the_file(capsys, tmp_path, manifest_dir):
    code, err = cli(capsys, _manifest_train(tmp_path / "run", manifest_dir / "train.csv"))
    assert code == 2
    assert_one_line_error(err, "017.png", "data.on_bad_image=skip")
    assert not ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_corrupt_image_skipped_and_counted(capsys, caplog, tmp_path, manifest_dir):
    import json

    run_dir = tmp_path / "run"
    argv = _manifest_train(run_dir, manifest_dir / "train.csv", "data.on_bad_image=skip")
    code, err = cli(capsys, argv)
    assert code == 0, err
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # 41 rows, batch 8: 5 batches per epoch; the one holding row 17 is incomplete and skipped.
    assert [r["skipped_batches"] for r in records] == [1, 1]
    assert [r["step"] for r in records] == [4, 8]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_images"] == 2  # read (and skipped) once per epoch
    assert any("017.png" in r.getMessage() for r in caplog.records)  # the warning names it


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda df: df.drop(columns=["path"]), "no column(s) 'path'"),
        (lambda df: df.assign(path=[None, *list(df.path[1:])]), "have no image path"),
        (lambda df: df.assign(sid=["a"] * len(df)), "must hold integers"),
    ],
)
def test_malformed_manifest(capsys, tmp_path, manifest_dir, mutate, needle):
    df = pd.read_csv(manifest_dir / "train.csv")
    bad = manifest_dir / "bad.csv"
    mutate(df).to_csv(bad, index=False)
    extra = ["data.id_column=sid"] if "integers" in needle else []
    code, err = cli(capsys, _manifest_train(tmp_path / "run", bad, *extra))
    assert code == 2
    assert_one_line_error(err, needle)
