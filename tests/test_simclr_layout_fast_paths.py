"""SimCLR layout fast paths (pairs.excluded_columns) against the general mask-reading paths.

A SimCLR batch's negatives are every column but the anchor's own and its positive; kernels that
know it skip reading ``neg_mask`` (negative counts M - 2, threshold counts from float
comparisons minus two gathered entries, the keep-mask's float ``neg_mask & keep`` remembered for
the loss, the no-detector SogCLR exponentials). Everything must give the same bits as the
general paths, which the tests reach by dropping the layout record from the batch.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import debiascl.objectives.objective as objective_module
from debiascl.losses.global_contrastive import exp_all_but_positive, masked_exp
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.mask_counts import (
    keep_at_or_below,
    kept_counts,
    kept_negatives,
    kept_negatives_float,
    negative_counts,
)
from debiascl.negatives.thresholds import ones_outside_columns, threshold_gradient
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.pairs import _LAYOUT, clip_pairs, excluded_columns, simclr_pairs


def _bits(x: torch.Tensor) -> torch.Tensor:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return x.detach().contiguous().view(ints[x.element_size()])


def _same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(_bits(x), _bits(y))


def _batch(b: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return simclr_pairs(
        torch.randn(b, 8, generator=g), torch.randn(b, 8, generator=g), torch.arange(b)
    )


def test_excluded_columns_name_self_and_positive_and_follow_the_mask():
    batch = _batch()
    cols = excluded_columns(batch)
    assert cols is not None
    expect = ~batch.neg_mask
    got = torch.zeros_like(expect)
    got.scatter_(1, cols, True)
    assert torch.equal(got, expect)
    assert torch.equal(negative_counts(batch), batch.neg_mask.sum(1))
    # a replaced batch (stable/text detectors) and CLIP batches have no record
    assert excluded_columns(dataclasses.replace(batch, sim=batch.sim * 2)) is None
    assert all(
        excluded_columns(p) is None
        for p in clip_pairs(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4))
    )
    # an in-place write to neg_mask invalidates the record: counts follow the mask
    batch.neg_mask[0, 3] = False
    assert excluded_columns(batch) is None
    assert torch.equal(negative_counts(batch), batch.neg_mask.sum(1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_counts_and_keep_cache_equal_the_mask_reads(seed):
    batch = _batch(b=9, seed=seed)
    sim = batch.sim.detach().float()
    g = torch.Generator().manual_seed(seed)
    lam = torch.rand(sim.shape[0], generator=g) - 0.5
    lam[0] = sim[0, 4]  # a tie at the threshold: kept, not above
    lam[1] = sim[1, 1]  # a tie at an excluded column
    sim[2, 5] = float("nan")  # compares False either way
    cols = excluded_columns(batch)
    fast = threshold_gradient(sim, batch.neg_mask, lam, 0.1, negative_counts(batch), cols)
    general = threshold_gradient(sim, batch.neg_mask, lam, 0.1)
    assert all(_same_bits(f, r) for f, r in zip(fast, general, strict=True))
    assert torch.equal(fast[0], ((sim > lam[:, None]) & batch.neg_mask).sum(1).float())

    keep = keep_at_or_below(batch, sim, lam)
    assert torch.equal(keep, sim <= lam[:, None])
    kept = batch.neg_mask & keep
    assert torch.equal(kept_counts(batch, keep), kept.sum(1))
    mask_f, counts = kept_negatives_float(batch, keep)
    assert _same_bits(mask_f, kept.float()) and torch.equal(counts, kept.sum(1))
    assert torch.equal(kept_negatives(batch, keep)[0], kept)
    # an in-place write to keep: the remembered floats are not reused
    keep[3].fill_(False)
    kept = batch.neg_mask & keep
    assert kept_counts(batch, keep)[3] == 0
    assert _same_bits(kept_negatives_float(batch, keep)[0], kept.float())


def test_ones_outside_columns_counts_the_ones_of_the_other_columns():
    g = torch.Generator().manual_seed(4)
    ones = (torch.rand(7, 300, generator=g) < 0.5).float()
    columns = torch.stack([torch.randperm(300, generator=g)[:3] for _ in range(7)])
    outside = torch.ones(7, 300, dtype=torch.bool).scatter_(1, columns, False)
    want = (ones.double() * outside.double()).sum(1)  # float64 reference
    got = ones_outside_columns(ones, columns)
    assert got.dtype == torch.float32 and torch.equal(got.double(), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_all_but_self_and_positive_equals_masked_exp(dtype):
    batch = _batch(b=16)
    sim = batch.sim.to(dtype)
    for scale in (5.0, 100.0):
        s = torch.tensor(scale)
        fast = exp_all_but_positive(sim, s, excluded_columns(batch))
        general = masked_exp(sim, s, batch.neg_mask)
        general_f = masked_exp(sim, s, batch.neg_mask.float())
        for f, r, rf in zip(fast, general, general_f, strict=True):
            assert _same_bits(f, r) and _same_bits(rf, r)


def _run(dtype, detector, labels, general, monkeypatch):
    if general:  # drop the layout record: every kernel reads the masks
        original = objective_module.simclr_pairs

        def plain(*args, **kwargs):
            batch = original(*args, **kwargs)
            del batch.__dict__[_LAYOUT]
            return batch

        monkeypatch.setattr(objective_module, "simclr_pairs", plain)
    g = torch.Generator().manual_seed(3)
    b, n = 32, 96
    det = None
    if detector != "none":
        kw = {"start_epoch": 1, "update_start_epoch": 0} if detector == "late" else {}
        det = GloFNDDetector(n, alpha=0.2, init="batch_quantile", placement="cpu", **kw)
    obj = ContrastiveObjective("image_image", GlobalContrastiveLoss(n), det, num_samples=n)
    out = []
    for step in range(6):
        a = torch.randn(b, 8, generator=g, dtype=dtype).requires_grad_()
        c = torch.randn(b, 8, generator=g, dtype=dtype).requires_grad_()
        ids = torch.randperm(n, generator=g)[:b]
        lab = torch.randint(0, 3, (b,), generator=g) if labels else None
        res = obj(a, c, ids, lab, logit_scale=5.0, ctx=StepContext(step=step, epoch=step // 3))
        res.loss.backward()
        out += [res.loss.detach(), res.value, a.grad, c.grad, res.keep_masks["image"]]
    out += [v.clone() for v in obj.state_dict().values() if isinstance(v, torch.Tensor)]
    monkeypatch.undo()
    return out, obj.epoch_diagnostics()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detector", ["none", "glofnd", "late"])
@pytest.mark.parametrize("labels", [False, True])
def test_objective_fast_path_equals_general_path(dtype, detector, labels, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast, fast_diag = _run(dtype, detector, labels, False, monkeypatch)
        general, general_diag = _run(dtype, detector, labels, True, monkeypatch)
    assert len(fast) == len(general)
    assert all(_same_bits(f, r) for f, r in zip(fast, general, strict=True))
    assert fast_diag.keys() == general_diag.keys()
    for key, value in fast_diag.items():  # NaN (e.g. precision with nothing removed) on both
        other = general_diag[key]
        assert value == other or (value != value and other != other)
