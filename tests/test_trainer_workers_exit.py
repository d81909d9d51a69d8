"""A process that ``multiprocessing`` started exits without a hang while its Trainer lives.

Training loaders keep their workers between epochs (``persistent_workers``), and the workers
ignore SIGTERM (pre-emption is the main process's business). A spawned process does not run
atexit handlers: it ends by SIGTERM-ing and joining its daemonic children, so a Trainer still
alive at that point (a script's global, or a traceback's frames after an error) used to leave
it waiting forever. Real spawned processes, each bounded by a timeout:

* ``fit()`` shuts its workers down, whether it returns or raises (the error is reported);
* workers started outside ``fit()`` and never closed are killed when the process exits;
* ``close()`` / ``with trainer:`` shut them down, and the loader still works afterwards.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from debiascl.config import load_config
from debiascl.train.trainer import Trainer

#: 2 steps of 64 images, read by two persistent loader workers
TINY = [
    "data.train_size=128",
    "train.batch_size=64",
    "train.epochs=1",
    "train.log_every=1000",
    "data.num_workers=2",
]
EXIT_TIMEOUT = 60.0  # seconds; importing torch dominates, training is 3 steps

_KEPT: list[Trainer] = []  # the child's trainers stay alive until the process exits


def _live_workers() -> int:
    return sum(p.daemon for p in multiprocessing.active_children())


def _child(run_dir: str, conn) -> None:
    """Reports its live loader workers at each point; ends by raising out of ``fit``."""

    def trainer(name: str) -> Trainer:
        _KEPT.append(Trainer(load_config("digits_simclr", TINY), run_dir=Path(run_dir) / name))
        return _KEPT[-1]

    trainer("fits").fit(evaluate=False)
    conn.send(_live_workers())  # 0: fit() shut its persistent workers down
    next(iter(trainer("iterated").train_loader))
    conn.send(_live_workers())  # 2: started outside fit() and never closed
    failing = trainer("fails")
    original = failing.train_step

    def step(batch, ctx):  # the second step fails, with the workers serving batches
        if ctx.step == 1:
            conn.send(_live_workers())  # 4
            raise RuntimeError("step failed on purpose")
        return original(batch, ctx)

    failing.train_step = step  # type: ignore[method-assign]
    try:
        failing.fit(evaluate=False)
    finally:  # the error leaves the process with its traceback holding the trainer
        conn.send(_live_workers())  # 2: fit() shut its own workers down as it raised


def test_a_spawned_process_with_live_trainers_exits_promptly(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(str(tmp_path), send))
    proc.start()
    send.close()
    try:
        proc.join(EXIT_TIMEOUT)
        hung = proc.is_alive()
    finally:
        if proc.is_alive():  # its loader workers notice their parent is gone and exit
            proc.kill()
            proc.join()
    seen = []
    while recv.poll():
        try:
            seen.append(recv.recv())
        except EOFError:
            break
    assert not hung, f"the spawned process hung at exit (live workers seen: {seen})"
    assert seen == [0, 2, 4, 2]
    assert proc.exitcode == 1  # the step's error, reported rather than hanging


def test_close_and_the_context_manager_stop_the_workers_and_keep_the_loader(tmp_path):
    before = _live_workers()
    with Trainer(load_config("digits_simclr", TINY), run_dir=tmp_path / "run") as trainer:
        first = next(iter(trainer.train_loader))
        assert _live_workers() == before + 2
    assert _live_workers() == before
    again = next(iter(trainer.train_loader))  # new workers, the same first batch of epoch 0
    assert _live_workers() == before + 2
    assert first["index"].tolist() == again["index"].tolist()
    trainer.close()
    trainer.close()  # idempotent
    assert _live_workers() == before
