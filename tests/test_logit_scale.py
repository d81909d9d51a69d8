"""One owner of the temperature per run: the loss (issue 10 items 1 and 6, issue 11 item 2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from debiascl.checkpoint.legacy import OLD_MODEL_KEY, SCALE_KEY
from debiascl.compose import build_loss, build_objective
from debiascl.config import load_config
from debiascl.config.loader import BUILTIN_DIR
from debiascl.config.schema import MOVED_KEYS
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
from debiascl.eval import run as evaluate_module
from debiascl.objectives import ContrastiveObjective, InfoNCELoss
from debiascl.objectives.scale import LogitScale
from debiascl.registry import LOSSES
from debiascl.train.trainer import Trainer

CPU = ["train.device=cpu", "train.batch_size=32"]


def _infonce_grad_log_scale(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """float64 reference: d/d(log s) of the mean symmetric CLIP InfoNCE at scale s."""
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = torch.nn.functional.normalize(b.double(), dim=1)
    sim = a @ b.T
    total = 0.0
    for s_mat in (sim, sim.T):  # image -> text rows, text -> image rows
        p = torch.softmax(scale * s_mat, dim=1)
        # d loss_i / d s = sum_j p_ij sim_ij - sim_ii ; d/d log s = s * d/ds
        total += float(((p * s_mat).sum(1) - s_mat.diagonal()).mean()) * scale / 2
    return total


def test_learned_scale_above_the_cap_keeps_its_gradient_and_comes_back_down() -> None:
    torch.manual_seed(0)
    loss = InfoNCELoss(0.01, learn_temperature=True, max_logit_scale=100.0)
    objective = ContrastiveObjective("image_text", loss, num_samples=16)
    with torch.no_grad():
        loss.scale.log_scale.fill_(math.log(150.0))  # pushed past the cap (e.g. by a big step)
    assert float(loss.scale().detach()) == pytest.approx(150.0)  # no clamp in the forward pass
    a = torch.randn(16, 8)
    b = -a + 0.1 * torch.randn(16, 8)  # positives anti-aligned: a larger scale hurts
    out = objective(a, b, torch.arange(16))
    out.loss.backward()
    grad = float(loss.scale.log_scale.grad)
    assert grad == pytest.approx(_infonce_grad_log_scale(a, b, 150.0), rel=1e-4)
    assert grad > 0
    opt = torch.optim.SGD(loss.parameters(), lr=1e-3)
    before = loss.scale.value
    opt.step()
    assert loss.scale.value < before  # the gradient moved it down
    objective.clamp_logit_scale_()  # and the after-step cap stores at most 100
    assert loss.scale.value == pytest.approx(100.0, rel=1e-6)


def test_clamp_caps_the_stored_value_and_leaves_a_fixed_scale_alone() -> None:
    learned = LogitScale(0.05, learnable=True, max_scale=30.0)
    with torch.no_grad():
        learned.log_scale.fill_(math.log(80.0))
    learned.clamp_()
    assert learned.value == pytest.approx(30.0, rel=1e-6)
    fixed = LogitScale(0.01, learnable=False, max_scale=30.0)  # the cap is for learned scales
    fixed.clamp_()
    assert fixed.value == pytest.approx(100.0, rel=1e-6)
    assert list(fixed.parameters()) == []
    with pytest.raises(ConfigError, match="above"):
        LogitScale(0.01, learnable=True, max_scale=30.0)


def test_one_owner_per_call() -> None:
    z = torch.randn(4, 8)
    owned = ContrastiveObjective("image_image", InfoNCELoss(0.5), num_samples=4)
    learned = ContrastiveObjective("image_image", InfoNCELoss(0.5, True), num_samples=4)
    with pytest.raises(ConfigError, match="learns its temperature"):
        learned(z, z, torch.arange(4), logit_scale=3.0)  # the learned scale would get no grad
    bare = ContrastiveObjective("image_image", InfoNCELoss(), num_samples=4)
    # the same loss value whether the loss owns t = 0.5 or the caller passes 1 / 0.5
    ids = torch.arange(4)
    assert torch.allclose(owned(z, z + 1, ids).loss, bare(z, z + 1, ids, logit_scale=2.0).loss)
    assert not torch.allclose(owned(z, z + 1, ids).loss, bare(z, z + 1, ids).loss)  # t = 0.1


@pytest.mark.parametrize("name", LOSSES.names())
def test_learned_temperature_only_where_the_loss_supports_it(name: str) -> None:
    overrides = ["loss.learn_temperature=true", f"loss.name={name}", "loss.temperature=0.1"]
    if name == "ssd":
        overrides.append("loss.ssd.eta_source=class_frequency")
    cfg = load_config("digits_simclr", overrides)
    info = DatasetInfo(num_samples=20, labels=torch.arange(20) % 4)
    loss_cls = type(build_loss(load_config("digits_simclr", overrides[1:]), info))
    if loss_cls.learns_temperature:
        objective = build_objective(cfg, info)
        assert [n for n, _ in objective.named_parameters()] == [SCALE_KEY]
    else:
        with pytest.raises(ConfigError) as err:
            build_objective(cfg, info)
        message = str(err.value)
        assert f"loss.name={name} keeps a fixed temperature" in message and "\n" not in message
        assert "infonce" in message  # it names the losses that learn it
    if name == "sogclr":  # its u tables are averages at one scale: fixed by design
        assert not loss_cls.learns_temperature
    if name == "infonce":  # CLIP
        assert loss_cls.learns_temperature


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_moved_keys_name_their_new_home(old: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("digits_clip", [f"{old}=2.0"])
    new_key = MOVED_KEYS[old].split()[0]
    assert old in str(err.value) and new_key in str(err.value) and "\n" not in str(err.value)


def test_shipped_configs_state_one_temperature_and_fmnist_clip_glofnd_evaluates_at_it() -> None:
    info = DatasetInfo(num_samples=10, labels=torch.arange(10) % 2)
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        text = path.read_text()
        assert "logit_scale_init" not in text and "learn_logit_scale" not in text, path.name
        load_config(path.stem)  # validates (moved keys would raise)
    cfg = load_config("fmnist_clip_glofnd")
    objective = build_objective(cfg, info)
    assert objective.logit_scale == pytest.approx(1 / 0.2)  # trained at t = 0.2; was 14.29
    assert list(objective.parameters()) == []


def _trainer(tmp_path: Path, config: str, *overrides: str) -> Trainer:
    cfg = load_config(config, [*CPU, "train.max_steps=1", *overrides])
    return Trainer(cfg, run_dir=tmp_path / "run")


def test_learned_scale_moves_in_training_and_a_fixed_one_is_no_parameter(tmp_path: Path) -> None:
    learned = _trainer(tmp_path / "a", "digits_clip", "loss.learn_temperature=true")
    start = learned.objective.logit_scale
    assert any(p is learned.objective.loss_fn.scale.log_scale for p in _opt_params(learned))
    learned.fit(evaluate=False)
    assert learned.objective.logit_scale != pytest.approx(start, abs=1e-6)
    for config in ("digits_clip", "digits_simclr"):
        fixed = _trainer(
            tmp_path / config, config, "loss.learn_temperature=false", "loss.temperature=0.25"
        )
        names = [n for n, _ in fixed.model.named_parameters()]
        names += [n for n, _ in fixed.objective.named_parameters()]
        assert not any("scale" in n for n in names), names
        assert len(_opt_params(fixed)) == len(list(fixed.model.parameters()))
        fixed.fit(evaluate=False)
        assert fixed.objective.logit_scale == pytest.approx(4.0)


def _opt_params(trainer: Trainer) -> list[torch.Tensor]:
    return [p for group in trainer.optimizer.param_groups for p in group["params"]]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["loss.name=sogclr", "loss.temperature=0.5", "loss.learn_temperature=false"], 2.0),
        (["loss.learn_temperature=true"], None),
    ],
)
def test_zero_shot_uses_the_trained_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], expected: float | None
) -> None:
    trainer = _trainer(tmp_path, "digits_clip", "train.max_steps=2", *overrides)
    trainer.fit(evaluate=False)
    seen: list[float] = []
    real = evaluate_module.zero_shot_eval

    def spy(image, labels, class_emb, logit_scale, names):  # records what evaluation passes
        seen.append(logit_scale)
        return real(image, labels, class_emb, logit_scale, names)

    monkeypatch.setattr(evaluate_module, "zero_shot_eval", spy)
    trainer.evaluate(references=False)  # the trainer's own evaluation path
    trained = trainer.objective.logit_scale
    assert seen == [pytest.approx(trained)]
    if expected is not None:
        assert trained == pytest.approx(expected)
    else:  # learned: evaluation sees the moved value, not the initial 1/0.07
        assert trained != pytest.approx(1 / 0.07, abs=1e-6)


def _without_scale(objective_state: dict) -> dict:
    return {k: v for k, v in objective_state.items() if not k.startswith("loss_fn.scale.")}


def test_old_checkpoint_layout_loads(tmp_path: Path) -> None:
    """Checkpoints from when the model held ``log_logit_scale`` load into the loss's scale."""
    src = _trainer(tmp_path / "src", "digits_clip", "loss.learn_temperature=true")
    src.fit(evaluate=False)
    state = src.state_dict()
    old_value = torch.tensor(math.log(20.0))
    state["model"] = {**state["model"], OLD_MODEL_KEY: old_value}
    state["objective"] = _without_scale(state["objective"])
    learned = _trainer(tmp_path / "dst", "digits_clip", "loss.learn_temperature=true")
    learned.load_state_dict(state)
    assert learned.objective.logit_scale == pytest.approx(20.0)
    fixed = _trainer(
        tmp_path / "fixed", "digits_clip", "loss.name=sogclr", "loss.learn_temperature=false"
    )
    fixed_state = fixed.state_dict()
    fixed_state["model"] = {**fixed_state["model"], OLD_MODEL_KEY: old_value}
    fixed_state["objective"] = {k: v for k, v in fixed_state["objective"].items() if k != SCALE_KEY}
    fixed.load_state_dict(fixed_state)  # the unused old model scale is dropped
    assert fixed.objective.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)
    assert "loss_fn.scale.fixed" in fixed.state_dict()["objective"]  # checkpoints record it


def test_an_old_checkpoint_that_does_not_fit_names_the_change(tmp_path: Path) -> None:
    from debiascl.errors import CheckpointError
    from debiascl.train import checkpoint as ckpt

    old = {
        "model": {OLD_MODEL_KEY: torch.tensor(2.0)},
        "fingerprint": "old",
        "fingerprint_parts": {"model": "a", "data": "d"},
        "config": {"model": {"logit_scale_init": 14.285714, "learn_logit_scale": True}},
    }
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(tmp_path / "old.pt", "new", {"model": "b", "data": "d"})
    assert "model.logit_scale_init -> loss.temperature" in str(err.value)
    assert "\n" not in str(err.value)
