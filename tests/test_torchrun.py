"""`torchrun --nproc_per_node 2 -m debiascl.cli train ...` on CPU (gloo), end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(config: str, run: Path, *overrides: str) -> None:
    """`torchrun --nproc_per_node 2 -m debiascl.cli train CONFIG` on CPU; fails with stderr."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "debiascl.cli", "train", config, "--run-dir", str(run), "--no-eval", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_torchrun_two_processes_train_with_glofnd(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    torchrun_train(
        "digits_simclr", run, "train.epochs=2", "train.batch_size=128", "loss.name=sogclr",
        "negatives.name=glofnd", "negatives.glofnd.init=batch_quantile",
    )  # fmt: skip
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # written once, by rank 0
    # 1347 training digits, global batch 128 -> 10 steps per epoch on every rank
    assert records[-1]["step"] == 20
    assert records[-1]["negatives/removed_fraction"] > 0
    ckpt = sorted((run / "checkpoints").glob("epoch*.pt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["step"] == 20


def test_torchrun_adversarial_clean_view(tmp_path: Path) -> None:
    """AdFair with the adversary on the un-augmented view (a second forward) under DDP."""
    run = tmp_path / "adv"
    torchrun_train(
        "synth_attr_adfair", run, "data.train_size=1024", "train.epochs=1",
        "model.text_encoder=bag_of_words", "data.augment=light", "fairness.view=clean",
    )  # fmt: skip
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(key.startswith("adv/") for key in record), sorted(record)
