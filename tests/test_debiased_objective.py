"""DebiasedLoss, the dcl/hcl/ssd builders and the objective end to end (SimCLR and CLIP)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from debiascl.compose import build_objective
from debiascl.config.loader import load_config
from debiascl.config.schema import RunConfig
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError, DataError, DebiasclError
from debiascl.eta.ngram import NGramLM
from debiascl.objectives import ContrastiveObjective, InfoNCELoss, StepContext
from debiascl.objectives.debiased_loss import DebiasedLoss
from debiascl.pairs import clip_pairs, simclr_pairs
from debiascl.registry import LOSSES


def naive_anchor_loss(p, negs, eta, beta, scale):
    n = len(negs)
    w = [math.exp(beta * x) for x in negs]
    s = n * sum(wi / sum(w) * math.exp(x) for wi, x in zip(w, negs, strict=True))
    ng = max((s - n * eta * math.exp(p)) / (1 - eta), n * math.exp(-scale))
    return -math.log(math.exp(p) / (math.exp(p) + ng))


def naive_simclr_mean(z1, z2, eta_of_id, beta, scale):
    """Mean over the 2B anchors of the debiased loss, SimCLR layout, plain loops."""
    z1, z2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    rows = torch.cat([z1, z2])
    b = z1.shape[0]
    losses = []
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        p = float(rows[i] @ rows[partner]) * scale
        negs = [float(rows[i] @ rows[j]) * scale for j in range(2 * b) if j not in (i, partner)]
        losses.append(naive_anchor_loss(p, negs, eta_of_id(i % b), beta, scale))
    return sum(losses) / len(losses)


def _views(b=8, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)


def test_objective_simclr_matches_naive_with_per_sample_eta():
    z1, z2 = _views()
    ids = torch.tensor([3, 0, 7, 9, 1, 4, 2, 5])
    table = torch.linspace(0.0, 0.3, 10)
    obj = ContrastiveObjective("image_image", DebiasedLoss(table, beta=0.5), num_samples=10)
    out = obj(z1, z2, ids, logit_scale=2.0)
    ref = naive_simclr_mean(z1, z2, lambda k: float(table[ids[k]]), 0.5, 2.0)
    assert math.isclose(float(out.value), ref, rel_tol=1e-5)
    assert math.isclose(float(out.loss), ref, rel_tol=1e-5)
    assert set(out.logs) == {"clamped_fraction", "eta_mean", "negatives"}
    assert out.logs["negatives"] == 14.0  # 2B - 2
    assert math.isclose(out.logs["eta_mean"], float(table[ids].mean()), rel_tol=1e-6)


def test_per_sample_eta_changes_only_its_anchors():
    z1, z2 = _views(seed=1)
    ids = torch.arange(8)
    table = torch.full((8,), 0.05)
    loss = DebiasedLoss(table)
    batch = simclr_pairs(z1, z2, ids)
    keep = torch.ones_like(batch.neg_mask)
    scale = torch.tensor(2.0)
    base = loss(batch, keep, scale, StepContext()).loss
    loss.eta_table[5] = 0.25
    moved = loss(batch, keep, scale, StepContext()).loss
    assert (moved != base).nonzero().flatten().tolist() == [5, 13]  # both views of sample 5


def test_clip_eta_applies_to_both_or_one_direction():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ids = torch.arange(6)
    i2t, t2i = clip_pairs(img, txt, ids)
    keep = torch.ones_like(i2t.neg_mask)
    scale = torch.tensor(3.0)
    table = torch.tensor([0.0, 0.1, 0.2, 0.05, 0.15, 0.3])
    both = DebiasedLoss(table)
    only_t2i = DebiasedLoss(table, eta_directions=("text_to_image",))
    plain = InfoNCELoss()
    ctx = StepContext()
    # text -> image: same loss with either setting; image -> text: eta 0 is InfoNCE when restricted
    torch.testing.assert_close(
        only_t2i(t2i, keep, scale, ctx).loss, both(t2i, keep, scale, ctx).loss
    )
    torch.testing.assert_close(
        only_t2i(i2t, keep, scale, ctx).loss,
        plain(i2t, keep, scale, ctx).loss,
        rtol=1e-6,
        atol=1e-6,
    )
    assert not torch.allclose(both(i2t, keep, scale, ctx).loss, plain(i2t, keep, scale, ctx).loss)
    # eta of pair k is used for image anchor k: check one anchor against the naive formula
    s = (F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T).double() * 3.0
    k = 5
    negs = [float(s[k, j]) for j in range(6) if j != k]
    ref = naive_anchor_loss(float(s[k, k]), negs, 0.3, 0.0, 3.0)
    assert math.isclose(float(both(i2t, keep, scale, ctx).loss[k]), ref, rel_tol=1e-5)


def test_keep_mask_removes_negatives_and_n_counts_kept_only():
    z1, z2 = _views(seed=3)
    batch = simclr_pairs(z1, z2, torch.arange(8))
    keep = torch.ones_like(batch.neg_mask)
    keep[0, 1:5] = False
    out = DebiasedLoss(0.1)(batch, keep, torch.tensor(2.0), StepContext())
    s = batch.sim.double() * 2.0
    negs = [float(s[0, j]) for j in range(16) if batch.neg_mask[0, j] and keep[0, j]]
    assert len(negs) == 10
    ref = naive_anchor_loss(float(s[0, 8]), negs, 0.1, 0.0, 2.0)
    assert math.isclose(float(out.loss[0]), ref, rel_tol=1e-5)


def test_bad_eta_inputs():
    with pytest.raises(DebiasclError, match=r"\[0, 1\)"):
        DebiasedLoss(1.0)
    with pytest.raises(DebiasclError, match=r"\[0, 1\)"):
        DebiasedLoss(torch.tensor([0.1, 1.5]))
    with pytest.raises(DataError, match="3 entries but there are 4"):
        DebiasedLoss(torch.tensor([0.1, 0.1, 0.1]), num_samples=4)
    with pytest.raises(DataError, match=r"shape \(N,\)"):
        DebiasedLoss(torch.full((2, 2), 0.1))
    table = torch.tensor([0.1, float("nan"), 0.2])
    loss = DebiasedLoss(table)  # NaN = no eta for that id: fine until the id is used
    z1, z2 = _views(b=3)
    batch = simclr_pairs(z1, z2, torch.arange(3))
    keep = torch.ones_like(batch.neg_mask)
    with pytest.raises(DataError, match="sample id 1 has no eta"):
        loss(batch, keep, torch.tensor(2.0), StepContext())
    small = DebiasedLoss(torch.tensor([0.1, 0.1]))
    with pytest.raises(DataError, match="no entry in the eta table"):
        small(batch, keep, torch.tensor(2.0), StepContext())
    with pytest.raises(ConfigError, match=r"loss\.dcl\.eta"):
        load_config(None, ["loss.name=dcl", "loss.dcl.eta=1.0"])


def test_registered():
    assert {"dcl", "hcl", "ssd"} <= set(LOSSES.names())


def _cfg(*overrides: str, tmp_path=None) -> RunConfig:
    extra = [f"output_dir={tmp_path}"] if tmp_path is not None else []
    return load_config(None, [*overrides, *extra])


def test_build_objective_dcl_hcl_simclr():
    info = DatasetInfo(num_samples=20)
    z1, z2 = _views()
    ids = torch.arange(8) + 4
    for name, beta in (("dcl", 0.0), ("hcl", 1.0)):
        hardness = [f"loss.{name}.beta={beta}"] if name == "hcl" else []  # dcl has no beta
        cfg = _cfg(f"loss.name={name}", f"loss.{name}.eta=0.1", *hardness)
        obj = build_objective(cfg, info)
        assert isinstance(obj.loss_fn, DebiasedLoss) and obj.loss_fn.beta == beta
        out = obj(z1.float().requires_grad_(True), z2.float(), ids, logit_scale=5.0)
        ref = naive_simclr_mean(z1, z2, lambda k: 0.1, beta, 5.0)
        assert math.isclose(float(out.value), ref, rel_tol=1e-4)
        out.loss.backward()


def test_build_errors():
    info = DatasetInfo(num_samples=8)
    with pytest.raises(ConfigError, match=r"unknown key 'loss\.dcl\.beta'.*beta is read by .*hcl"):
        build_objective(_cfg("loss.name=dcl", "loss.dcl.beta=1.0"), info)
    with pytest.raises(ConfigError, match="per-sample eta"):
        build_objective(_cfg("loss.name=ssd", "loss.ssd.eta_source=constant"), info)
    with pytest.raises(ConfigError, match="mlm_path"):
        build_objective(
            _cfg("loss.name=ssd", "data.mode=image_text"), DatasetInfo(8, texts=["a"] * 8)
        )
    with pytest.raises(ConfigError, match="no texts"):
        build_objective(_cfg("loss.name=ssd", "loss.ssd.eta_source=corpus_lm"), info)
    with pytest.raises(ConfigError, match="needs labels"):
        build_objective(_cfg("loss.name=dcl", "loss.dcl.eta_source=class_frequency"), info)
    with pytest.raises(ConfigError, match="image_text data only"):
        build_objective(_cfg("loss.name=dcl", "loss.dcl.eta_directions=text_to_image"), info)


def test_build_objective_dcl_class_frequency_simclr():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    info = DatasetInfo(num_samples=10, labels=labels)
    obj = build_objective(_cfg("loss.name=dcl", "loss.dcl.eta_source=class_frequency"), info)
    expected = torch.tensor([0.3, 0.3, 0.3, 0.2, 0.2, 0.5, 0.5, 0.5, 0.5, 0.5])
    torch.testing.assert_close(obj.loss_fn.eta_table, expected)


CAPTIONS = [
    "a photo of a shirt.",
    "a photo of a shirt.",
    "a photo of a shirt.",
    "a photo of a sneaker.",
    "a photo of a boot.",
    "a photo of a shirt.",
    "a bag on a table.",
    "a photo of a sneaker.",
]


def test_build_objective_ssd_corpus_lm_image_text(tmp_path):
    info = DatasetInfo(num_samples=9, texts=[*CAPTIONS, None])
    cfg = _cfg(
        "loss.name=ssd", "loss.ssd.eta_source=corpus_lm", "data.mode=image_text", tmp_path=tmp_path
    )
    obj = build_objective(cfg, info)
    table = obj.loss_fn.eta_table
    # expected eta from an independently fitted model and the SSD formula
    lm = NGramLM(2).fit(CAPTIONS)
    expected = [0.2 * math.exp(0.35 * lm.log_prob(t)) for t in CAPTIONS]
    torch.testing.assert_close(table[:8], torch.tensor(expected), rtol=1e-6, atol=0)
    assert torch.isnan(table[8])
    # same length: the 4x caption beats the 2x caption beats the unique one
    assert table[0] > table[3] > table[4]
    assert list((tmp_path / "eta_cache").glob("corpus_ngram-*.json"))

    g = torch.Generator().manual_seed(0)
    img = torch.randn(8, 16, generator=g, requires_grad=True)
    txt = torch.randn(8, 16, generator=g, requires_grad=True)
    out = obj(img, txt, torch.arange(8), logit_scale=14.0)
    out.loss.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()
    assert {"image_to_text/clamped_fraction", "text_to_image/eta_mean"} <= set(out.logs)
    # one direction only
    cfg1 = _cfg(
        "loss.name=ssd",
        "loss.ssd.eta_source=corpus_lm",
        "data.mode=image_text",
        "loss.directions=text_to_image",
        tmp_path=tmp_path,
    )
    out1 = build_objective(cfg1, info)(img, txt, torch.arange(8), logit_scale=14.0)
    assert set(out1.logs) == {"clamped_fraction", "eta_mean", "negatives"}
    # the missing text's id is a clear error when it shows up in a batch
    with pytest.raises(DataError, match="sample id 8 has no eta"):
        obj(img, txt, torch.tensor([0, 1, 2, 3, 4, 5, 6, 8]), logit_scale=14.0)


def test_bf16_autocast_objective_cpu():
    obj = ContrastiveObjective("image_image", DebiasedLoss(0.1, beta=1.0), num_samples=64)
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(32, 16, generator=g, requires_grad=True)
    z2 = torch.randn(32, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj(z1, z2 + z1.detach(), torch.arange(32), logit_scale=14.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z1.grad).all()
