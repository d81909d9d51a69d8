"""AdFair-CLIP adversary: gradient reversal, alternating updates, objectives, schedule, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from debiascl.config.schema import RunConfig
from debiascl.errors import ConfigError, DataError
from debiascl.fairness.adversary import (
    AdversarialFairness,
    AttributeSpec,
    adversarial_weight,
    confusion_loss,
    grad_reverse,
)
from debiascl.fairness_build import build_fairness_terms


def _stack(fairness: dict, data: dict, embed_dim: int, model=None, bundle=None):
    """The run's FairnessTerms for a config given as dicts (the composition layer's path)."""
    cfg = RunConfig.model_validate(
        {"data": data, "model": {"embed_dim": embed_dim}, "fairness": fairness}
    )
    return build_fairness_terms(cfg, model or torch.nn.Identity(), "cpu", bundle)


SPECS = [AttributeSpec("sex", 2), AttributeSpec("race", 3)]


def _batch(n=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    attrs = torch.stack(
        [torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1
    )
    attrs[0, 0] = -1  # missing sex
    attrs[1, 1] = -1  # missing race
    return z, attrs


def _adv(**kw):
    torch.manual_seed(0)
    return AdversarialFairness(8, SPECS, hidden_dim=6, **kw).double()


def _manual_ce(adv, z, attrs):
    """Discriminator CE written plainly: mean over labelled rows, summed over attributes."""
    out = adv.discriminator(z)
    total = 0.0
    for j, spec in enumerate(SPECS):
        t = attrs[:, j]
        keep = t >= 0
        total = total + F.cross_entropy(out[spec.name][keep], t[keep])
    return total


def test_grad_reverse_function():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64)
    (grad_reverse(x, 0.3) * w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w)
    assert torch.equal(grad_reverse(x, 0.3), x)


def test_reversal_encoder_gets_negated_scaled_discriminator_gradient():
    adv = _adv(weight=0.7, method="reversal", objective="cross_entropy")
    z, attrs = _batch()
    z1 = z.clone().requires_grad_(True)
    term, _ = adv.encoder_term(z1, attrs, epoch=0)
    term.backward()
    disc_grads = [p.grad.clone() for p in adv.discriminator.parameters()]
    adv.discriminator.zero_grad()
    z2 = z.clone().requires_grad_(True)
    _manual_ce(adv, z2, attrs).backward()
    assert torch.allclose(z1.grad, -0.7 * z2.grad)
    # the discriminator itself receives the un-reversed, unscaled gradient of its CE
    for g1, p in zip(disc_grads, adv.discriminator.parameters(), strict=True):
        assert torch.allclose(g1, p.grad)
    # and numerically: finite differences of the CE along a random direction
    v = torch.randn_like(z)
    eps = 1e-6
    with torch.no_grad():
        fd = (_manual_ce(adv, z + eps * v, attrs) - _manual_ce(adv, z - eps * v, attrs)) / (2 * eps)
    assert torch.allclose((z1.grad * v).sum(), -0.7 * fd, rtol=1e-5)


def test_missing_attributes_do_not_contribute():
    adv = _adv(method="reversal", objective="cross_entropy")
    z, attrs = _batch()
    attrs[:, 0] = -1  # nobody has sex
    attrs[2:, 1] = -1  # only rows 0 (and 1 is already missing) have race -> only row 0
    z1 = z.clone().requires_grad_(True)
    term, logs = adv.encoder_term(z1, attrs, 0)
    term.backward()
    assert torch.count_nonzero(z1.grad.abs().sum(1)).item() == 1
    assert z1.grad[0].abs().sum() > 0
    assert logs["adv/sex/labelled"] == 0


def test_alternating_updates_touch_only_their_side():
    adv = _adv(method="alternating", objective="confusion", lr=0.05)
    enc = torch.nn.Linear(4, 8).double()
    enc_opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    x = torch.randn(16, 4, dtype=torch.float64)
    _, attrs = _batch()

    def snap(m):
        return [p.detach().clone() for p in m.parameters()]

    d0, e0 = snap(adv.discriminator), snap(enc)
    adv.discriminator_step(enc(x).detach(), attrs)
    d1, e1 = snap(adv.discriminator), snap(enc)
    assert any(not torch.equal(a, b) for a, b in zip(d0, d1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(e0, e1, strict=True))

    enc_opt.zero_grad()
    term, _ = adv.encoder_term(enc(x), attrs, epoch=0)
    term.backward()
    assert all(p.grad is None for p in adv.discriminator.parameters())
    enc_opt.step()
    adv.step()  # no-op for alternating
    d2, e2 = snap(adv.discriminator), snap(enc)
    assert all(torch.equal(a, b) for a, b in zip(d1, d2, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(e1, e2, strict=True))


def test_reversal_step_updates_discriminator():
    adv = _adv(method="reversal", objective="confusion", lr=0.05)
    z, attrs = _batch()
    before = [p.detach().clone() for p in adv.discriminator.parameters()]
    term, _ = adv.encoder_term(z.clone().requires_grad_(True), attrs, 0)
    term.backward()
    adv.step()
    after = list(adv.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.grad is None for p in after)


def test_confusion_objective_value_and_gradient_to_encoder():
    adv = _adv(weight=2.0, method="alternating", objective="confusion")
    z, attrs = _batch()
    z1 = z.clone().requires_grad_(True)
    term, _ = adv.encoder_term(z1, attrs, 0)
    with torch.no_grad():
        out = adv.discriminator(z)
    ref = 0.0
    for j, spec in enumerate(SPECS):
        keep = attrs[:, j] >= 0
        p = out[spec.name][keep].softmax(-1)
        k = p.shape[1]
        ref += (1.0 / k * (math.log(1.0 / k) - p.log())).sum(1).mean()  # KL(u || p)
    assert torch.allclose(term.detach(), 2.0 * ref)
    assert term.item() >= 0


def test_confusion_loss_zero_at_uniform_and_bounded_below():
    t = torch.tensor([0, 1, -1])
    assert confusion_loss(torch.zeros(3, 4), t).item() == pytest.approx(0.0, abs=1e-7)
    assert confusion_loss(torch.randn(3, 4) * 5, t).item() > 0


def test_weight_schedule():
    assert adversarial_weight(0.5, 2.0, "constant", 1.0, 0.0) == 0.0
    assert adversarial_weight(1.0, 2.0, "constant", 1.0, 0.0) == 2.0
    assert adversarial_weight(2.0, 2.0, "linear", 1.0, 4.0) == pytest.approx(0.5)
    assert adversarial_weight(9.0, 2.0, "linear", 1.0, 4.0) == pytest.approx(2.0)
    p = 0.5
    assert adversarial_weight(3.0, 2.0, "dann", 1.0, 4.0) == pytest.approx(
        2.0 * (2 / (1 + math.exp(-10 * p)) - 1)
    )
    adv = _adv(weight=1.0, method="reversal", objective="cross_entropy", warmup_epochs=2)
    z, attrs = _batch()
    z1 = z.clone().requires_grad_(True)
    term, logs = adv.encoder_term(z1, attrs, epoch=1)
    term.backward()
    assert logs["adv/weight"] == 0.0 and torch.count_nonzero(z1.grad) == 0


def test_adversary_learns_a_decodable_attribute():
    torch.manual_seed(1)
    n = 256
    a = torch.randint(0, 2, (n,))
    z = torch.randn(n, 8) + 2.0 * a[:, None].float()
    adv = AdversarialFairness(8, [AttributeSpec("a", 2)], method="alternating", lr=1e-2)
    for _ in range(100):
        logs = adv.discriminator_step(z, a)
    assert logs["adv/a/disc_acc"] > 0.9


def test_bad_inputs():
    adv = _adv()
    z, attrs = _batch()
    with pytest.raises(DataError, match="expected"):
        adv.encoder_term(z, attrs[:, :1], 0)
    bad = attrs.clone()
    bad[0, 1] = 3
    with pytest.raises(DataError, match="outside"):
        adv.encoder_term(z, bad, 0)
    with pytest.raises(DataError, match="lacks"):
        adv.encoder_term(z, {"sex": attrs[:, 0]}, 0)
    with pytest.raises(ConfigError):
        AdversarialFairness(8, [AttributeSpec("x", 1)])
    with pytest.raises(ConfigError):
        AdversarialFairness(8, SPECS, schedule="cosine")


def test_build_from_config():
    data = {"attribute_columns": ["sex", "race"]}
    terms = [{"name": "adversary", "method": "alternating", "lr": 0.01}]
    adv = _stack({"terms": terms, "attributes": ["sex"]}, data, 16).terms["adversary"].core
    assert adv.method == "alternating" and adv.optimizer.param_groups[0]["lr"] == 0.01
    assert _stack({}, data, 16) is None
    with pytest.raises(ConfigError, match="not attribute columns"):
        _stack({"terms": terms, "attributes": ["age"]}, data, 16)


def test_trainer_adapter_maps_batches_and_orders_steps():
    from debiascl.objectives import StepContext

    adv = _stack(
        {
            "terms": [{"name": "adversary", "method": "alternating", "disc_steps": 3, "lr": 0.01}],
            "attributes": ["sex"],
        },
        {"mode": "image_image", "attribute_columns": ["site", "sex"]},
        8,
    )
    term_ = adv.terms["adversary"]
    a = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, 8, requires_grad=True)
    attrs = torch.tensor([[0, 1], [1, 0], [0, -1], [1, 1], [0, 0], [1, 1]])
    before = [p.detach().clone() for p in term_.discriminator.parameters()]
    losses, logs = adv(a, b, {"attrs": attrs}, StepContext(epoch=0))
    assert list(losses) == ["adversary"]
    term = losses["adversary"]
    # 3 discriminator steps already happened; the term reaches both views only, not D
    assert term_.core.optimizer.state[next(term_.discriminator.parameters())]["step"] == 3
    after = list(term_.discriminator.parameters())
    assert any(not torch.equal(x, y) for x, y in zip(before, after, strict=True))
    term.backward()
    assert all(p.grad is None for p in term_.discriminator.parameters())
    assert a.grad[2].abs().sum() == 0 and a.grad[0].abs().sum() > 0  # row 2: sex missing
    assert b.grad[0].abs().sum() > 0
    assert logs["adv/sex/labelled"] == 10  # 5 labelled rows x 2 views
    epoch = adv.epoch_logs()
    assert epoch["adv/sex/labelled_epoch"] == 10 and adv.epoch_logs() == {}
    with pytest.raises(DataError, match="attributes in the batch"):
        adv(a, b, {}, StepContext())
    state = adv.state_dict()
    assert any(k.endswith("_extra_state") for k in state)


def test_feature_hook_feeds_backbone_features_to_the_adversary():
    """fairness.on=feature: D sees model.encoder's output; gradient reaches the backbone only
    through that feature (the head is not in the adversarial path); eval passes are ignored."""
    from debiascl.errors import TrainingError
    from debiascl.models.clip import SimCLRModel
    from debiascl.objectives import StepContext

    torch.manual_seed(0)
    backbone = torch.nn.Linear(5, 4)
    backbone.feature_dim = 4
    model = SimCLRModel(backbone, torch.nn.Linear(4, 3))
    adv = _stack(
        {"terms": [{"name": "adversary", "method": "alternating", "layers": 0}],
         "attributes": ["sex"], "on": "feature"},
        {"mode": "image_image", "attribute_columns": ["sex"]}, 3, model,
    )  # fmt: skip
    disc = adv.terms["adversary"].discriminator
    assert disc.heads["sex"].in_features == 4  # backbone width, not embed_dim
    x1, x2 = torch.randn(6, 5), torch.randn(6, 5)
    with torch.no_grad():
        model(torch.randn(6, 5))  # evaluation pass: must not be picked up
    with pytest.raises(TrainingError, match="no backbone feature"):
        adv(torch.zeros(6, 3), torch.zeros(6, 3), {"attrs": torch.zeros(6, 1)}, StepContext())
    z = model(torch.cat([x1, x2]))
    a, b = z.chunk(2)
    attrs = torch.tensor([[0], [1], [0], [1], [-1], [1]])
    losses, logs = adv(a, b, {"attrs": attrs}, StepContext(epoch=0))
    term = losses["adversary"]
    assert logs["adv/sex/labelled"] == 10  # both views, row 4 missing
    term.backward()
    assert model.head.weight.grad is None  # the head is not on the adversary's path
    assert model.encoder.weight.grad is not None
    # the same value computed by hand from the backbone output with the current D
    with torch.no_grad():  # (a no-grad pass, so the hook ignores it)
        feats = backbone(torch.cat([x1, x2]))
    assert adv._feature is None  # used once, then dropped
    t = torch.cat([attrs, attrs])[:, 0]
    logp = F.log_softmax(disc(feats)["sex"][t >= 0], -1)
    assert torch.allclose(term, (-logp.mean(-1) - math.log(2)).mean(), atol=1e-6)
    adv.remove_hook()
    model(torch.cat([x1, x2]))
    assert adv._feature is None


def test_standardised_discriminator_ignores_rescaling_and_linear_option():
    """disc_standardize: D's output does not change when the encoder rescales or shifts z, so
    shrinking the attribute direction cannot fool it; disc_layers=0 is a linear D."""
    torch.manual_seed(0)
    adv = AdversarialFairness(8, SPECS, hidden_dim=6, standardize=True).double()
    z, _ = _batch()
    scale = torch.rand(8, dtype=torch.float64) * 0.5 + 0.2  # per-coordinate shrinking
    out1 = adv.discriminator(z)["sex"]
    out2 = adv.discriminator(z * scale + 3.0)["sex"]
    assert torch.allclose(out1, out2, atol=1e-3)
    # reference: the MLP on z standardised by hand with the batch mean and biased variance
    zs = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    h = adv.discriminator.trunk[1:](zs)
    assert torch.allclose(out1, adv.discriminator.heads["sex"](h), atol=1e-10)
    plain = AdversarialFairness(8, SPECS, hidden_dim=6).double()
    assert not torch.allclose(plain.discriminator(z)["sex"], plain.discriminator(z * scale)["sex"])
    lin = AdversarialFairness(8, SPECS, layers=0).double()
    assert len(lin.discriminator.trunk) == 0
    w, b_ = lin.discriminator.heads["race"].weight, lin.discriminator.heads["race"].bias
    assert torch.allclose(lin.discriminator(z)["race"], z @ w.T + b_)
    terms = [{"name": "adversary", "standardize": True, "layers": 0}]
    built = _stack({"terms": terms, "attributes": ["sex"]}, {"attribute_columns": ["sex"]}, 8)
    assert isinstance(built.terms["adversary"].discriminator.trunk[0], torch.nn.BatchNorm1d)


def test_label_balance_table_makes_attribute_independent_of_class():
    """table[y, a] = P(a) / P(a | y): the weighted joint factorises, checked against pandas."""
    import numpy as np
    import pandas as pd

    from debiascl.fairness.penalties import label_balance_table

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400).copy()
    a = np.where(rng.random(400) < np.array([0.9, 0.5, 0.2])[y], 1, 0)
    y[:5] = -1  # unlabelled rows are ignored
    table = label_balance_table(torch.as_tensor(y), torch.as_tensor(a), 3, 2).double()
    df = pd.DataFrame({"y": y, "a": a})[y >= 0]
    joint = pd.crosstab(df.y, df.a, normalize=True).to_numpy()
    p_a = joint.sum(0)
    ref = p_a[None, :] / (joint / joint.sum(1, keepdims=True))
    assert np.allclose(table.numpy(), ref)
    w = table[torch.tensor(df.y.to_numpy()), torch.tensor(df.a.to_numpy())].numpy()
    wj = pd.crosstab(df.y, df.a, values=w, aggfunc="sum").to_numpy().copy()
    wj /= wj.sum()
    assert np.allclose(wj, np.outer(wj.sum(1), wj.sum(0)))  # independent under the weights
    assert np.allclose(wj.sum(0), p_a)  # attribute marginal kept


def test_sample_weights_enter_both_losses():
    """Weighted CE / confusion equal weighted means written plainly; zero-weight rows are inert."""
    adv = _adv(method="alternating")
    z, attrs = _batch()
    w = torch.rand(16, 2, dtype=torch.float64)
    w[3] = 0.0
    logs = adv.discriminator_step(z, attrs, w)
    assert "adv/sex/disc_weighted_acc" in logs
    out = adv.discriminator(z)
    ref = 0.0
    for j, spec in enumerate(SPECS):
        keep = attrs[:, j] >= 0
        logp = F.log_softmax(out[spec.name][keep], -1)
        kl = -logp.mean(-1) - math.log(spec.num_classes)
        ref = ref + (kl * w[keep, j]).sum() / w[keep, j].sum()
    zz = z.clone().requires_grad_(True)
    term, _ = adv.encoder_term(zz, attrs, 0.0, w)
    assert torch.allclose(term, ref)
    term.backward()
    assert zz.grad[3].abs().sum() == 0 and zz.grad[4].abs().sum() > 0
    with pytest.raises(DataError, match="sample_weights"):
        adv.encoder_term(z, attrs, 0.0, torch.ones(16, 3))


def test_trainer_adapter_balances_by_class_label():
    """fairness.balance=label: the adapter looks up P(a)/P(a|y) of each row from the data."""
    from types import SimpleNamespace

    from debiascl.objectives import StepContext

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    sex = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])  # P(sex=1|y=0) = 3/4, P(sex=1|y=1) = 1/4
    data = SimpleNamespace(
        train=SimpleNamespace(labels=labels, attrs=sex[:, None]),
        attr_names=["sex"],
        attr_vocab={"sex": {"F": 0, "M": 1}},
    )
    adv = _stack(
        {"terms": [{"name": "adversary"}], "attributes": ["sex"], "balance": "label"},
        {"mode": "image_text", "attribute_columns": ["sex"]}, 4, bundle=data,
    )  # fmt: skip
    batch = {"attrs": torch.tensor([[1], [0], [1], [-1]]), "label": torch.tensor([0, 0, 1, 1])}
    w = adv.sample_weights(batch["label"], batch["attrs"])
    # P(sex=1) = 1/2: weights 0.5/0.75, 0.5/0.25, 0.5/0.25, and 1 for the missing attribute
    assert torch.allclose(w[:, 0], torch.tensor([2 / 3, 2.0, 2.0, 1.0]))
    z = torch.randn(4, 4, requires_grad=True)
    _terms, logs = adv(z, z, batch, StepContext(epoch=0))
    assert "adv/sex/disc_weighted_acc" in logs
    with pytest.raises(DataError, match="class labels"):
        adv(z, z, {"attrs": batch["attrs"]}, StepContext(epoch=0))


def test_group_mean_gap_against_plain_reference():
    """Standardised and whitened (Fisher) group-mean gaps vs numpy; 0 when the means agree."""
    import numpy as np

    from debiascl.fairness.penalties import group_mean_gap

    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 3, generator=g, dtype=torch.float64)
    t = torch.arange(40) % 2
    t[0] = -1
    w = torch.rand(40, generator=g, dtype=torch.float64) + 0.5
    x, tt, ww = z[1:].numpy(), t[1:].numpy(), w[1:].numpy()
    mu = (ww[:, None] * x).sum(0) / ww.sum()
    sd = np.sqrt((ww[:, None] * (x - mu) ** 2).sum(0) / ww.sum() + 1e-6)
    ref, within = 0.0, np.zeros((3, 3))
    mus = {}
    for k in (0, 1):
        m = tt == k
        mus[k] = (ww[m, None] * x[m]).sum(0) / ww[m].sum()
        ref += ww[m].sum() / ww.sum() * np.mean(((mus[k] - mu) / sd) ** 2)
        within += (ww[m, None] * (x[m] - mus[k])).T @ (x[m] - mus[k])
    within /= ww.sum()
    within = 0.9 * within + 0.1 * np.trace(within) / 3 * np.eye(3)
    fisher = sum(
        ww[tt == k].sum() / ww.sum() * (mus[k] - mu) @ np.linalg.solve(within, mus[k] - mu) / 3
        for k in (0, 1)
    )
    assert group_mean_gap(z, t, 2, w).item() == pytest.approx(ref, rel=1e-5)
    assert group_mean_gap(z, t, 2, w, whiten=True).item() == pytest.approx(fisher, rel=1e-5)
    # equal group means -> 0, whatever the scale of the coordinates
    same = torch.cat([z[:20], z[:20] * torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)])
    tg = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    assert group_mean_gap(same * 100, tg, 2).item() == pytest.approx(0.0, abs=1e-10)
    assert group_mean_gap(same, tg, 2, whiten=True).item() == pytest.approx(0.0, abs=1e-10)
    # invariant to rescaling coordinates (cannot be lowered by shrinking a direction)
    s = torch.tensor([0.1, 1.0, 50.0], dtype=torch.float64)
    assert group_mean_gap(z * s, t, 2, w).item() == pytest.approx(ref, rel=1e-4)
