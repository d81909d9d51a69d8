"""Fairness terms shaped like losses (issue 11): registry, settings, old keys, the trainer's sum.

* a toy term defined here trains through the config after one registration line, with no
  trainer change (the acceptance test of "adding a term touches only its file + a registration");
* the trainer's step with ``fairness.terms: [{name: fisher_gap, weight: 10}]`` equals a hand-written
  step ``contrastive + 10 * group_mean_gap(whiten)`` with P(a)/P(a|y) weights counted here;
* each term's schedule applies to its own weight (the old ``weight=0`` silently dropped the
  warm-up of the mean-gap penalty);
* old flat keys fail with one line naming the new spelling.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch.nn import functional as F

from debiascl.config import load_config
from debiascl.errors import CheckpointError, ConfigError
from debiascl.fairness.adversary import AttributeSpec
from debiascl.fairness.penalties import group_mean_gap
from debiascl.fairness.terms import (
    FAIRNESS_TERMS,
    FairnessTerm,
    TermInputs,
    TermSettings,
    TermSetup,
    parse_term_settings,
    register_term,
)
from debiascl.objectives import StepContext
from debiascl.train.trainer import Trainer


class ToySpread(FairnessTerm):
    """Toy term: weight * mean squared row norm of z, with a step counter as its own state."""

    class Settings(TermSettings):
        name: Literal["toy_spread"]
        power: float = 2.0

    def __init__(self, settings: Settings, setup: TermSetup) -> None:
        super().__init__(settings, setup)
        self.register_buffer("after_steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: TermInputs):
        value = x.z.norm(dim=1).pow(self.settings.power).mean()
        return {self.name: self.weight_at(x.epoch) * value}, {"toy/value": float(value.detach())}

    def after_step(self, scaler=None) -> None:
        self.after_steps += 1


if "toy_spread" not in FAIRNESS_TERMS.names():  # the one registration line
    register_term("toy_spread")(ToySpread)


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "data.train_size=256",
        "data.test_size=64",
        "model.text_encoder=bag_of_words",
        "model.width=4",
        "model.embed_dim=16",
        "model.proj_hidden_dim=32",
        "train.epochs=1",
        "train.batch_size=64",
        "train.threads=1",
        "optim.warmup_epochs=0",
        f"output_dir={tmp_path}",
        "name=terms",
        *extra,
    ]


def _ctx(step: int = 0, frac: float = 0.0) -> StepContext:
    return StepContext(epoch=0, step=step, training=True, progress=0.0, fractional_epoch=frac)


def test_toy_term_trains_through_config(tmp_path: Path) -> None:
    cfg = load_config(
        "synth_attr_adfair",
        _overrides(
            tmp_path,
            "fairness.terms=[{name: toy_spread, weight: 0.5, power: 2}]",
            "fairness.normalize=false",
        ),
    )
    tr = Trainer(cfg, run_dir=tmp_path / "toy")
    toy = tr.fairness.terms["toy_spread"]
    batch = next(iter(tr.train_loader))
    with torch.no_grad():
        a, _ = copy.deepcopy(tr)._embed(batch)  # the rows the term will see (before the step)
    logs = tr.train_step(batch, _ctx())
    expected = float(a.norm(dim=1).pow(2).mean())
    assert logs["toy/value"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss/toy_spread"] == pytest.approx(0.5 * expected, rel=1e-5)
    assert int(toy.after_steps) == 1  # its own hook ran after the optimiser step
    tr.train_step(next(iter(tr.train_loader)), _ctx(1))
    assert int(toy.after_steps) == 2
    assert "terms.toy_spread.after_steps" in tr.fairness.state_dict()  # its state is saved
    assert tr.fairness.epoch_logs()["toy/value_epoch"] > 0
    with pytest.raises(ConfigError, match="unknown key 'pow'"):
        load_config("synth_attr_adfair", ["fairness.terms=[{name: toy_spread, pow: 3}]"])
    # a checkpoint of the pre-terms adversary names the change instead of a key mismatch
    old = {**tr.state_dict(), "adversary": {"core.discriminator.trunk.0.weight": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match="pre-terms adversary"):
        tr.load_state_dict(old)


def _balance_weights(labels: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
    """P(a) / P(a | y) per row, counted in float64 from the training set."""
    w = torch.empty(len(labels), dtype=torch.float64)
    n = len(labels)
    for i in range(n):
        y, a = int(labels[i]), int(marks[i])
        in_class = labels == y
        p_a = float((marks == a).sum()) / n
        p_a_y = float(((marks == a) & in_class).sum()) / float(in_class.sum())
        w[i] = p_a / p_a_y
    return w


def test_trainer_sums_named_terms_like_a_plain_step(tmp_path: Path) -> None:
    """fisher_gap weight 10: the trainer's step == contrastive + 10 * Fisher gap by hand."""
    over = _overrides(tmp_path, "fairness.terms=[{name: fisher_gap, weight: 10}]")
    tr = Trainer(load_config("synth_attr_adfair", over), run_dir=tmp_path / "a")
    plain = Trainer(
        load_config("synth_attr_adfair", [*over, "fairness.terms=[]"]), run_dir=tmp_path / "b"
    )
    for p, q in zip(tr.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(p, q)  # same seed, same start
    train = tr.data.train
    table_w = _balance_weights(torch.as_tensor(train.labels), torch.as_tensor(train.attrs)[:, 0])
    batch = next(iter(tr.train_loader))
    logs = tr.train_step(batch, _ctx())
    # the plain step, written out
    a, b = plain._embed(batch)
    out = plain.objective(a, b, batch["index"], batch["label"], ctx=_ctx())
    rows = batch["index"]
    w = table_w[rows].float()
    gap = group_mean_gap(F.normalize(a, dim=-1), batch["attrs"][:, 0], 2, w, whiten=True)
    loss = out.loss + 10.0 * gap
    plain.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    plain.optimizer.step()
    assert logs["loss/fisher_gap"] == pytest.approx(10.0 * gap.item(), rel=1e-5)
    assert logs["fisher_gap/synthetic_mark"] == pytest.approx(gap.item(), rel=1e-5)
    for p, q in zip(tr.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_each_term_follows_its_own_schedule() -> None:
    """Warm-up and ramp apply to the gap term's weight, whatever the other terms' weights."""
    setup = TermSetup([AttributeSpec("m", 2)], input_dim=3)
    gap = FAIRNESS_TERMS.get("mean_gap")(
        parse_term_settings({"name": "mean_gap", "weight": 4, "schedule": "linear",
                             "warmup_epochs": 0.5, "ramp_epochs": 1.0}), setup)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 3, generator=g, dtype=torch.float64)
    attrs = (torch.arange(12) % 2)[:, None]
    plain = float(group_mean_gap(z, attrs[:, 0], 2))
    for epoch, factor in [(0.0, 0.0), (0.49, 0.0), (1.0, 0.5), (1.5, 1.0), (3.0, 1.0)]:
        out, logs = gap(TermInputs(z, attrs, None, None, epoch))
        assert float(out["mean_gap"]) == pytest.approx(4 * factor * plain, abs=1e-12)
        assert logs["mean_gap/m"] == pytest.approx(plain)


def test_old_flat_keys_name_the_new_spelling() -> None:
    headline = ["fairness.enabled=true", "fairness.weight=0", "fairness.mean_gap_weight=10",
                "fairness.mean_gap_whiten=true"]  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_config("synth_attr_clip", headline)
    msg = str(err.value)
    assert "\n" not in msg and "fairness.mean_gap_whiten" in msg
    assert msg.endswith("use fairness.terms: [{name: fisher_gap, weight: 10.0}]")
    # the suggestion is itself a valid config that builds the same term
    spelled = msg.split("use fairness.terms: ")[1]
    cfg = load_config("synth_attr_clip", [f"fairness.terms={spelled}"])
    assert cfg.fairness.terms[0].name == "fisher_gap" and cfg.fairness.terms[0].weight == 10
    with pytest.raises(ConfigError, match=r"fairness.adversary_view moved: use fairness.view: "):
        load_config("synth_attr_clip", ["fairness.adversary_view=clean"])
    with pytest.raises(ConfigError, match="use eval.fairness_audit.val_fraction: 0.3"):
        load_config("synth_attr_clip", ["fairness.audit_val_fraction=0.3"])
    adv = ["fairness.enabled=true", "fairness.schedule=linear", "fairness.ramp_epochs=2",
           "fairness.mean_gap_weight=1"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"\{name: mean_gap, weight: 1.0, schedule: linear"):
        load_config("synth_attr_clip", adv)  # the penalty followed the adversary's schedule
    # user input with old keys at their defaults is refused too (saved run configs are migrated)
    with pytest.raises(ConfigError, match="fairness.bootstrap, fairness.enabled, fairness.weight"):
        load_config("synth_attr_clip", ["fairness.enabled=false", "fairness.weight=1.0",
                                        "fairness.bootstrap=200"])  # fmt: skip


def test_fingerprint_keeps_the_term_names() -> None:
    from debiascl.train.checkpoint import fingerprint_parts

    def part(*over: str) -> str:
        return fingerprint_parts(load_config("synth_attr_adfair", list(over)), 100)["fairness"]

    fisher = part("fairness.terms=[{name: fisher_gap, weight: 10}]")
    assert fisher != part("fairness.terms=[{name: mean_gap, weight: 10}]")
    assert fisher == part("fairness.terms=[{name: fisher_gap, weight: 10, shrinkage: 0.1}]")
    assert part() == part("eval.fairness_audit.bootstrap=5")  # the audit is not training


def test_term_list_errors() -> None:
    with pytest.raises(ConfigError, match="unknown fairness term 'fisher'.*fisher_gap"):
        load_config("synth_attr_clip", ["fairness.terms=[{name: fisher}]"])
    with pytest.raises(ConfigError, match=r"fairness.terms\[0\] \(fisher_gap\): shrinkage"):
        load_config("synth_attr_clip", ["fairness.terms=[{name: fisher_gap, shrinkage: 0}]"])
    with pytest.raises(ConfigError, match="mapping with a name"):
        load_config("synth_attr_clip", ["fairness.terms=[fisher_gap]"])
    with pytest.raises(ConfigError, match="twice"):
        cfg = load_config(
            "synth_attr_clip",
            ["fairness.terms=[{name: mean_gap}, {name: mean_gap}]",
             "data.attribute_columns=[synthetic_mark]"],
        )  # fmt: skip
        from debiascl.fairness_build import build_fairness_terms

        build_fairness_terms(cfg, torch.nn.Identity(), "cpu")
    for name in FAIRNESS_TERMS.names():  # every registered term has typed settings by its name
        assert parse_term_settings({"name": name}).name == name


def test_stop_and_resume_with_terms_is_bit_identical(tmp_path: Path) -> None:
    """A run with an adversary and a running-moment term, stopped mid-epoch by a signal and
    resumed, ends with the same model, term state (discriminator, its Adam state, running
    covariance) and epoch logs as the uninterrupted run."""
    from reliability_helpers import metrics, run, run_until_signal

    over = [
        "model.text_encoder=bag_of_words",
        "data.test_size=64",
        "train.epochs=2",  # 8 steps per epoch
        "fairness.terms=[{name: adversary, hidden_dim: 8}, "
        "{name: fisher_gap, weight: 5, momentum: 0.9, warmup_epochs: 0.5}]",
    ]
    ref = run(tmp_path / "ref", over, "synth_attr_adfair")
    run_until_signal(tmp_path / "cut", 11, over, "synth_attr_adfair")
    resumed = run(tmp_path / "cut", [*over, "checkpoint.resume=latest"], "synth_attr_adfair")
    for part in ("model", "fairness"):
        a, b = getattr(ref, part).state_dict(), getattr(resumed, part).state_dict()
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key
    opt_a = ref.fairness.terms["adversary"].core.optimizer.state_dict()["state"]
    opt_b = resumed.fairness.terms["adversary"].core.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    assert metrics(tmp_path / "ref") == metrics(tmp_path / "cut")
    assert ref.fairness.terms["fisher_gap"].cov_steps[0] == 16
