"""The demo's progress where no tqdm bar shows (CI logs, ``| tee``, nohup): one line per epoch."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import sys
import termios
import threading
from pathlib import Path

from debiascl.demo import _train_block

# a tiny Fashion-MNIST run: 2 epochs of 4 steps, one probe, no references
TINY = [
    "data.train_size=512",
    "data.test_size=200",
    "train.batch_size=128",
    "train.epochs=2",
    "eval.probe_seeds=1",
    "eval.linear_probe_fractions=[1.0]",
    "eval.knn_k=20",
    "eval.references=false",
]
LINE = re.compile(
    r"^\[3/9\] plain epoch (\d)/2 loss (\d+\.\d{3}) \((\d+) s\)(, evaluating \.\.\.)?$"
)


def test_demo_prints_a_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path: Path, capsys):
    assert not sys.stderr.isatty()  # pytest's captured stream, as in CI or under | tee
    _train_block("fmnist_simclr", [("plain", "none", TINY)], tmp_path, False, 2, 9)
    out = capsys.readouterr().out.splitlines()
    lines = [m for m in map(LINE.match, out) if m]
    assert out[0] == "[3/9] training plain ..."
    assert [m.group(1) for m in lines] == ["1", "2"]
    assert [bool(m.group(4)) for m in lines] == [False, True]  # evaluation follows the last one
    # the printed loss and time are those of the run's epoch records
    records = [
        json.loads(x) for x in (tmp_path / "none" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m.group(2) for m in lines] == [f"{r['loss']:.3f}" for r in records]
    assert [m.group(3) for m in lines] == [f"{r['epoch_seconds']:.0f}" for r in records]


def test_demo_keeps_the_tqdm_bar_and_prints_no_epoch_lines_on_a_terminal(
    tmp_path: Path, capsys, monkeypatch
):
    master, slave = os.openpty()  # a real terminal as stderr, 100 columns wide (tqdm fits it)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    terminal = os.fdopen(slave, "w")
    seen: list[bytes] = []

    def drain() -> None:  # read the terminal so the bar's writes never block
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the slave end closed
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        _train_block("fmnist_simclr", [("plain", "none", TINY)], tmp_path, False, 2, 9)
    finally:
        monkeypatch.undo()
        terminal.close()
        reader.join(timeout=10)
        os.close(master)
    out = capsys.readouterr().out
    assert "[3/9] training plain ..." in out
    assert not [line for line in out.splitlines() if LINE.match(line)]
    shown = b"".join(seen)  # the tqdm bars (description, postfix) went to the terminal
    assert b"epoch 1/2" in shown and b"epoch 2/2" in shown and b"loss=" in shown
