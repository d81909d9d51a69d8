"""SogCLR global contrastive loss: estimator gradients, u updates, keep-masks, objective value,
schedules and checkpoints, against float64 references written here."""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.errors import CheckpointError, ConfigError
from debiascl.losses.global_contrastive import cosine_gamma
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, InfoNCELoss, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.pairs import PairwiseBatch, clip_pairs, simclr_pairs


def _leaf_sim(batch: PairwiseBatch) -> PairwiseBatch:
    """The same batch with ``sim`` as a leaf, to read d(loss)/d(sim) directly."""
    batch.sim = batch.sim.detach().clone().requires_grad_(True)
    return batch


def test_unimodal_surrogate_gradient_and_u_updates_match_the_estimator():
    torch.manual_seed(0)
    b, n, scale, gamma = 5, 12, 4.0, 0.7
    ids = torch.tensor([2, 9, 4, 0, 11])
    loss_fn = GlobalContrastiveLoss(n, gamma=gamma)
    u_store = {}  # float64 reference table: id -> u
    for _step in range(3):
        batch = _leaf_sim(simclr_pairs(torch.randn(b, 6), torch.randn(b, 6), ids))
        keep = torch.rand(2 * b, 2 * b) > 0.3  # an arbitrary keep-mask
        terms = loss_fn(batch, keep, torch.tensor(scale), StepContext())
        (grad,) = torch.autograd.grad(terms.loss.sum(), batch.sim)

        sim = batch.sim.detach().double()
        logits = scale * sim
        mask = batch.neg_mask & keep
        want_grad = torch.zeros_like(sim)
        want_obj = torch.zeros(2 * b, dtype=torch.float64)
        new_u = {}
        for r in range(2 * b):
            i = ids[r % b].item()
            kept = mask[r]
            g_r = torch.exp(logits[r][kept]).mean()  # mean over kept negatives
            u_r = g_r if i not in u_store else (1 - gamma) * u_store[i] + gamma * g_r
            w = torch.exp(logits[r]) / u_r
            want_grad[r, kept] = scale * w[kept] / kept.sum()  # d l / d s = scale
            want_grad[r, batch.pos_index[r]] -= scale
            want_obj[r] = -logits[r, batch.pos_index[r]] + torch.log(u_r)
            new_u.setdefault(i, []).append(u_r)
        torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(terms.objective.double(), want_obj, rtol=1e-5, atol=1e-5)
        u_store.update({i: sum(us) / len(us) for i, us in new_u.items()})  # mean of the views
        table = loss_fn.tables["image"].read(ids)
        want_u = torch.stack([u_store[i] for i in ids.tolist()])
        torch.testing.assert_close(table[:, 0].double().exp(), want_u, rtol=1e-5, atol=0)
        assert table[:, 1].tolist() == [float(_step + 1)] * b


def test_bimodal_uses_logits_relative_to_the_positive_and_two_tables():
    torch.manual_seed(1)
    b, n, scale = 6, 10, 7.0
    ids = torch.arange(b) + 3
    loss_fn = GlobalContrastiveLoss(n, mode="image_text", gamma=0.5)
    i2t, t2i = clip_pairs(torch.randn(b, 4), torch.randn(b, 4), ids)
    # first visit of u_txt only sets u = g, so visit u_img twice to exercise the average
    for _ in range(2):
        batch = _leaf_sim(clip_pairs(torch.randn(b, 4), torch.randn(b, 4), ids)[0])
        keep = torch.ones(b, b, dtype=torch.bool)
        u_before = loss_fn.tables["image_to_text"].read(ids).double()
        terms = loss_fn(batch, keep, torch.tensor(scale), StepContext())
    (grad,) = torch.autograd.grad(terms.loss.sum(), batch.sim)
    sim = batch.sim.detach().double()
    d = scale * (sim - sim.diagonal()[:, None])
    neg = batch.neg_mask
    g = torch.stack([torch.exp(d[r][neg[r]]).mean() for r in range(b)])
    u = 0.5 * u_before[:, 0].exp() + 0.5 * g
    w = torch.exp(d) / u[:, None] * neg
    want = scale * w / neg.sum(1, keepdim=True)
    want[torch.arange(b), torch.arange(b)] = -scale * w.sum(1) / neg.sum(1)
    torch.testing.assert_close(grad.double(), want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms.objective.double(), torch.log(u), rtol=1e-5, atol=1e-5)
    assert loss_fn.tables["text_to_image"].data[:, 1].sum() == 0
    loss_fn(t2i, torch.ones(b, b, dtype=torch.bool), torch.tensor(scale), StepContext())
    assert loss_fn.tables["text_to_image"].data[ids, 1].tolist() == [1.0] * b
    del i2t


def test_logit_scale_gets_the_exact_objective_gradient_on_first_visit():
    """With u = g exactly (first visit), the surrogate's d/d(scale) equals d F / d(scale)."""
    torch.manual_seed(2)
    b = 7
    img, txt = torch.randn(b, 5), torch.randn(b, 5)
    for mode in ("image_image", "image_text"):
        scale = torch.tensor(3.0, requires_grad=True)
        loss_fn = GlobalContrastiveLoss(20, mode=mode)
        batches = (
            [simclr_pairs(img, txt, torch.arange(b))]
            if mode == "image_image"
            else list(clip_pairs(img, txt, torch.arange(b)))
        )
        total = sum(
            loss_fn(bt, torch.ones_like(bt.neg_mask), scale, StepContext()).loss.sum()
            for bt in batches
        )
        (got,) = torch.autograd.grad(total, scale)
        s64 = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        ref = 0.0
        for bt in batches:
            sim = bt.sim.detach().double()
            for r in range(sim.shape[0]):
                pos = sim[r, bt.pos_index[r]]
                negs = sim[r][bt.neg_mask[r]]
                ref = ref - s64 * pos + torch.log(torch.exp(s64 * negs).mean())
        (want,) = torch.autograd.grad(ref, s64)
        assert got.item() == pytest.approx(want.item(), rel=1e-4)


def test_stable_at_large_logit_scale():
    torch.manual_seed(3)
    loss_fn = GlobalContrastiveLoss(10, mode="image_image")
    z = torch.randn(4, 3)
    batch = simclr_pairs(z, z + 0.01 * torch.randn(4, 3), torch.arange(4))
    terms = loss_fn(batch, torch.ones_like(batch.neg_mask), torch.tensor(100.0), StepContext())
    assert torch.isfinite(terms.loss).all() and torch.isfinite(terms.objective).all()
    assert torch.isfinite(loss_fn.tables["image"].data).all()


def test_cosine_gamma_schedule():
    loss_fn = GlobalContrastiveLoss(4, gamma=1.0, gamma_schedule="cosine", gamma_min=0.2)
    assert loss_fn.gamma_at(0.0) == pytest.approx(1.0)
    assert loss_fn.gamma_at(0.5) == pytest.approx(0.6)
    assert loss_fn.gamma_at(1.0) == pytest.approx(0.2)
    assert cosine_gamma(0.9, 0.1, 0.25) == pytest.approx(
        0.1 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4))
    )
    assert GlobalContrastiveLoss(4, gamma=0.9).gamma_at(0.7) == 0.9
    with pytest.raises(ConfigError):
        GlobalContrastiveLoss(4, gamma=0.0)
    with pytest.raises(ConfigError):
        GlobalContrastiveLoss(4, gamma_schedule="linear")


def _objectives(loss_name, detector):
    loss = InfoNCELoss() if loss_name == "infonce" else GlobalContrastiveLoss(40, gamma=0.8)
    return ContrastiveObjective("image_image", loss, detector, num_samples=40)


@pytest.mark.parametrize("loss_name", ["infonce", "sogclr"])
def test_before_start_epoch_or_tiny_alpha_loss_equals_unfiltered(loss_name):
    torch.manual_seed(4)
    plain = _objectives(loss_name, None)
    delayed = _objectives(loss_name, GloFNDDetector(40, 0.3, start_epoch=10, update_start_epoch=0))
    tiny = _objectives(loss_name, GloFNDDetector(40, 1e-9, optimizer="sgd", lr=0.05))
    for step in range(4):
        z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
        ids = torch.randperm(40)[:8]
        ctx = StepContext(epoch=step, step=step)
        ref = plain(z1, z2, ids, ctx=ctx)
        for obj in (delayed, tiny):
            out = obj(z1, z2, ids, ctx=ctx)
            assert torch.equal(out.loss, ref.loss) and torch.equal(out.value, ref.value)
    # the delayed detector did learn thresholds meanwhile
    assert (delayed.detector.tables["image"].data[:, 0] < 1).any()


@pytest.mark.parametrize("loss_name", ["infonce", "sogclr"])
def test_at_least_one_negative_kept_when_lambda_is_minus_one(loss_name):
    torch.manual_seed(5)
    det = GloFNDDetector(20, 0.1, update_start_epoch=99)  # masks with the stored lambda only
    det.tables["image"].data[:, 0] = -1.0
    obj = _objectives(loss_name, det)
    obj.num_samples = 20
    out = obj(torch.randn(6, 4), torch.randn(6, 4), torch.arange(6))
    keep = out.keep_masks["image"]
    neg = simclr_pairs(torch.randn(6, 4), torch.randn(6, 4), torch.arange(6)).neg_mask
    kept = (keep & neg).sum(1)
    assert (kept == 1).all()
    assert torch.isfinite(out.loss) and torch.isfinite(out.value)


def test_checkpoint_round_trip_restores_every_table_exactly():
    torch.manual_seed(6)

    def build(n=30):
        return ContrastiveObjective(
            "image_text",
            GlobalContrastiveLoss(n, mode="image_text", gamma=0.6),
            GloFNDDetector(n, 0.2, mode="image_text", lr=0.1),
            num_samples=n,
        )

    obj = build()
    for _ in range(3):
        obj(torch.randn(8, 5), torch.randn(8, 5), torch.randperm(30)[:8])
    state = obj.state_dict()
    copy = build()
    copy.load_state_dict(state)
    for key, value in obj.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(copy.state_dict()[key], value), key
    tables = [k for k in state if k.endswith(".data")]
    assert len(tables) == 4  # u_img, u_txt, lambda_img, lambda_txt
    a, b, ids = torch.randn(8, 5), torch.randn(8, 5), torch.randperm(30)[:8]
    assert torch.equal(obj(a, b, ids).loss, copy(a, b, ids).loss)
    with pytest.raises(CheckpointError):
        build(31).load_state_dict(state)
