"""The adversary inside the training step: per-step weight schedule (issue 10, item 5) and the
discriminator's gradients under fp16 loss scaling (item 7).

Item 5: ``warmup_epochs``/``ramp_epochs`` used to read the integer epoch, so a linear ramp over one
epoch of 100 steps gave 0, 0, 0, 1 at steps 0, 50, 99, 100. The trainer now passes the fractional
epoch ``epoch + b / steps_per_epoch``.

Item 7: with ``method=reversal`` the discriminator's loss is part of the backward the encoder's
GradScaler scales, but only the encoder optimiser went through ``scaler.unscale_``: D's optimiser
stepped on gradients multiplied by the loss scale (65536 at the start of fp16 training). A CPU
``GradScaler`` with a real scale factor reproduces this without a GPU.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from debiascl.cli import main
from debiascl.config import load_config
from debiascl.fairness.adversary import AdversarialFairness, AttributeSpec
from debiascl.fairness.terms import schedule_epoch as _schedule_epoch
from debiascl.objectives import StepContext
from debiascl.train.trainer import Trainer


def trainer_ctx(step: int, steps_per_epoch: int) -> StepContext:
    """The context the trainer builds for global step ``step`` (b = the epoch's batch index)."""
    epoch, b = divmod(step, steps_per_epoch)
    return StepContext(epoch=epoch, step=step, fractional_epoch=epoch + b / steps_per_epoch)


def test_linear_ramp_over_one_epoch_moves_every_step():
    adv = AdversarialFairness(4, [AttributeSpec("s", 2)], weight=1.0, schedule="linear",
                              warmup_epochs=0.0, ramp_epochs=1.0)  # fmt: skip
    got = [adv.current_weight(_schedule_epoch(trainer_ctx(s, 100))) for s in (0, 50, 99, 100)]
    assert got == pytest.approx([0.0, 0.5, 0.99, 1.0])
    warm = AdversarialFairness(4, [AttributeSpec("s", 2)], weight=2.0, schedule="linear",
                               warmup_epochs=0.5, ramp_epochs=1.0)  # fmt: skip
    got = [warm.current_weight(_schedule_epoch(trainer_ctx(s, 100))) for s in (0, 50, 100, 150)]
    assert got == pytest.approx([0.0, 0.0, 1.0, 2.0])
    # a context without fractional_epoch (a library user's own loop) keeps the integer epoch
    assert _schedule_epoch(StepContext(epoch=3)) == 3.0


def _overrides(run_dir: Path) -> list[str]:
    return [
        "data.train_size=256",
        "data.test_size=64",
        "model.text_encoder=bag_of_words",
        "model.width=4",
        "model.embed_dim=16",
        "model.proj_hidden_dim=32",
        "train.batch_size=64",
        "train.threads=1",
        "fairness.terms=[{name: adversary, hidden_dim: 8}]",
        f"output_dir={run_dir.parent}",
        f"name={run_dir.name}",
    ]


def test_trainer_passes_the_fractional_epoch(tmp_path: Path) -> None:
    """4 steps per epoch, linear ramp over epoch 1: weights 0, 1/4, 2/4, 3/4, then 1."""
    run_dir = tmp_path / "ramp"
    extra = ["train.epochs=2", "fairness.terms=[{name: adversary, hidden_dim: 8, "
             "schedule: linear, warmup_epochs: 0, ramp_epochs: 1}]"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--no-eval", "synth_attr_adfair", *_overrides(run_dir), *extra])
    assert code == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    means = [r["adv/weight_epoch"] for r in rows if "adv/weight_epoch" in r]
    assert means == pytest.approx([(0 + 0.25 + 0.5 + 0.75) / 4, 1.0])


def _one_reversal_step(tmp_path: Path, scale: float | None) -> tuple[list, list]:
    """D's gradients as its optimiser sees them, and D's parameters after one trainer step."""
    cfg = load_config("synth_attr_adfair", [*_overrides(tmp_path / "amp"), "train.epochs=1"])
    torch.manual_seed(0)
    trainer = Trainer(cfg, run_dir=tmp_path / f"amp{scale}")
    if scale is not None:  # fp16 AMP's loss scaling with a real factor, on the CPU
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    core = trainer.fairness.terms["adversary"].core
    assert core.method == "reversal"
    seen: list[list[torch.Tensor]] = []
    core.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(
            [p.grad.clone() for p in core.discriminator.parameters()]
        )
    )
    batch = next(iter(trainer.train_loader))
    torch.manual_seed(1)
    trainer.train_step(batch, trainer_ctx(0, trainer.steps_per_epoch))
    return seen[0], [p.detach().clone() for p in core.discriminator.parameters()]


def test_discriminator_gradients_are_unscaled_under_loss_scaling(tmp_path: Path) -> None:
    plain_grads, plain_params = _one_reversal_step(tmp_path, None)
    scaled_grads, scaled_params = _one_reversal_step(tmp_path, 2.0**16)
    assert any(g.abs().max() > 0 for g in plain_grads)
    for g_plain, g_scaled in zip(plain_grads, scaled_grads, strict=True):
        torch.testing.assert_close(g_scaled, g_plain, rtol=1e-5, atol=1e-9)
    for p_plain, p_scaled in zip(plain_params, scaled_params, strict=True):
        torch.testing.assert_close(p_scaled, p_plain, rtol=1e-5, atol=1e-7)


def test_discriminator_step_is_skipped_on_inf_gradients() -> None:
    adv = AdversarialFairness(4, [AttributeSpec("s", 2)], method="reversal", lr=0.1)
    z = torch.randn(8, 4, requires_grad=True)
    attrs = torch.tensor([[0], [1]] * 4)
    before = [p.detach().clone() for p in adv.discriminator.parameters()]
    term, _ = adv.encoder_term(z, attrs, epoch=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(term * float("inf")).backward()
    adv.step(scaler)
    scaler.update()
    for a, b in zip(before, adv.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)  # the overflowed step was skipped, like the encoder's
    assert scaler.get_scale() == 2.0**9
