"""The trainer's per-step guards: the non-finite gradient check and the batch/stop flags.

The gradient guard computes all gradient norms in one multi-tensor call, and in one process the
flags are read on the host (no tensor, no device sync); these tests pin what they decide.
"""

from __future__ import annotations

import signal

import pytest
import torch

from debiascl.config import load_config
from debiascl.errors import TrainingError
from debiascl.train.trainer import Trainer

TINY = [
    "data.train_size=128",
    "train.batch_size=32",
    "train.epochs=1",
    "train.max_steps=3",
    "model.width=4",
    "model.proj_hidden_dim=32",
    "model.embed_dim=16",
]


def _poison_gradient_at_step(trainer: Trainer, step: int, value: float) -> None:
    """Make one parameter's gradient non-finite (one element) at ``step``; the loss stays
    finite, so only the gradient guard can catch it."""
    param = list(trainer.model.parameters())[-1]

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if trainer.state.step != step:
            return grad
        grad = grad.clone()
        grad.view(-1)[0] = value
        return grad

    param.register_hook(hook)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_gradient_is_skipped(tmp_path, value):
    cfg = load_config("digits_simclr", [*TINY, "train.on_nonfinite=skip"])
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    _poison_gradient_at_step(trainer, 1, value)
    before = {}

    original = trainer.train_step

    def step(batch, ctx):
        if ctx.step == 1:
            before.update({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
        logs = original(batch, ctx)
        if ctx.step == 1:  # the skipped step left every parameter as it was (batch-norm
            after = dict(trainer.model.named_parameters())  # running statistics do move)
            assert all(torch.equal(before[k], after[k]) for k in before)
        return logs

    trainer.train_step = step
    trainer.fit(evaluate=False)
    assert trainer.state.step == 3
    assert trainer.progress.nonfinite == 1
    assert before  # the check above ran
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_gradient_stops_with_the_step(tmp_path):
    cfg = load_config("digits_simclr", TINY)
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    _poison_gradient_at_step(trainer, 1, float("nan"))
    with pytest.raises(TrainingError, match="non-finite gradient at epoch 1 step 2"):
        trainer.fit(evaluate=False)
    assert trainer.state.step == 1


def test_flags_in_one_process(tmp_path):
    cfg = load_config("digits_simclr", TINY)
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    full = {"index": torch.arange(32)}
    short = {"index": torch.arange(31)}
    assert trainer._sync_flags(full) == (True, False)
    assert trainer._sync_flags(short) == (False, False)
    assert trainer._sync_flags(None) == (False, False)
    trainer._stop_signal = signal.SIGTERM
    assert trainer._sync_flags(full) == (True, True)
    assert trainer._sync_flags(short) == (False, True)
