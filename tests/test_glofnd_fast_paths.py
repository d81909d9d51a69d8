"""The CPU fast paths of the GloFND + SogCLR step give the same bits as the reference paths.

* threshold comparisons written as float then cast (``above_rows`` / ``at_or_below_rows``) vs
  torch's comparisons into bool, NaN and ties included;
* the per-batch mask counts (``mask_counts``) vs direct counts, recomputed after an in-place
  write;
* ``batch_quantile``'s host positions and numpy interpolation (few rows) vs its tensor path and
  vs ``torch.quantile`` in float64;
* GloFND's numpy per-id update vs the torch update, and whole objective runs (losses, gradients,
  tables, keep-masks, statistics) with ``host_update`` on and off, unimodal and bimodal, with
  and without masking, float32 and float64 embeddings;
* no detector vs an explicit keep-everything detector (the objective then hands ``neg_mask`` to
  the loss).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from debiascl.negatives.detector import FalseNegativeDetector
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.host_update import host_threshold_update
from debiascl.negatives.mask_counts import kept_negatives, negative_counts
from debiascl.negatives.thresholds import (
    ThresholdRule,
    above_rows,
    at_or_below_rows,
    batch_quantile,
    count_true,
)
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.debiased_loss import DebiasedLoss
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.pairs import simclr_pairs
from debiascl.state.tables import SampleTable


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    fresh = torch.contiguous_format
    a, b = a.clone(memory_format=fresh).view(-1), b.clone(memory_format=fresh).view(-1)
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_comparisons_equal_torch_comparisons(dtype):
    g = torch.Generator().manual_seed(0)
    sim = (torch.rand(37, 29, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    sim[8, :] = float("inf")
    sim[7, 2] = float("nan")
    lam = sim[:, 3].clone()  # ties: every row has an entry equal to its threshold
    lam[5] = float("nan")
    assert _bits_equal(above_rows(sim, lam), sim > lam[:, None])
    assert _bits_equal(at_or_below_rows(sim, lam), sim <= lam[:, None])
    assert above_rows(sim, lam)[:, 3].sum() == 0  # a tie is not above
    assert not at_or_below_rows(sim, lam)[5].any()  # NaN compares False either way


@pytest.mark.parametrize("width", [8, 64, 2040, 2048, 2056, 4104])
def test_count_true_matches_sum_around_block_sizes(width):
    g = torch.Generator().manual_seed(width)
    mask = torch.rand(6, width, generator=g) > 0.3
    assert torch.equal(count_true(mask), mask.sum(1))
    assert torch.equal(count_true(torch.ones(3, width, dtype=torch.bool)), torch.full((3,), width))


def test_mask_counts_equal_direct_counts_and_follow_in_place_writes():
    g = torch.Generator().manual_seed(1)
    batch = simclr_pairs(
        torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.arange(6)
    )
    keep = torch.rand(batch.neg_mask.shape, generator=g) > 0.4
    kept, counts = kept_negatives(batch, keep)
    assert torch.equal(kept, batch.neg_mask & keep)
    assert torch.equal(counts, (batch.neg_mask & keep).sum(1))
    assert torch.equal(negative_counts(batch), batch.neg_mask.sum(1))
    keep[0].fill_(False)  # a real in-place write: the remembered counts must not be reused
    assert torch.equal(kept_negatives(batch, keep)[1], (batch.neg_mask & keep).sum(1))
    assert kept_negatives(batch, keep)[1][0] == 0
    # keep = neg_mask itself: the negatives and their counts, no AND
    neg, n = kept_negatives(batch, batch.neg_mask)
    assert neg is batch.neg_mask and torch.equal(n, batch.neg_mask.sum(1))
    batch.neg_mask[1, 0] = not bool(batch.neg_mask[1, 0])
    assert torch.equal(negative_counts(batch), batch.neg_mask.sum(1))


def _reference_quantile(row: torch.Tensor, alpha: float) -> float:
    """torch.quantile of one row's negatives in float64 (the module's documented rule)."""
    return float(torch.quantile(row.double(), 1 - alpha))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3, 0.5])
def test_batch_quantile_host_path_equals_tensor_path_and_reference(alpha, dtype):
    g = torch.Generator().manual_seed(int(alpha * 100))
    rows, width = 9, 300
    sim = (torch.rand(rows, width, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    sim[2, 10:20] = sim[2, 5]  # ties at the cut
    mask = torch.rand(rows, width, generator=g) > 0.2
    mask[3] = False  # a row without negatives gives -inf
    mask[4] = False
    mask[4, :7] = True  # few negatives
    with warnings.catch_warnings():  # alpha * 7 < 1 for the small alphas (warned, not tested)
        warnings.simplefilter("ignore", UserWarning)
        host = batch_quantile(sim, mask, alpha)  # 9 rows: host positions + numpy interpolation
        pad = 70  # the same rows, padded past the host limit: the tensor path
        tensor = batch_quantile(
            torch.cat([sim, sim[:1].expand(pad, width)]),
            torch.cat([mask, mask[:1].expand(pad, width)]),
            alpha,
        )[:rows]
        per_row_alpha = batch_quantile(sim, mask, torch.full((rows,), alpha, dtype=torch.float64))
    assert _bits_equal(host, tensor)
    assert _bits_equal(host, per_row_alpha)
    assert host[3] == float("-inf")
    for i in range(rows):
        if i == 3:
            continue
        ref = _reference_quantile(sim[i][mask[i]], alpha)
        assert float(host[i]) == pytest.approx(ref, abs=2e-7 if dtype == torch.float32 else 1e-12)
        # rounded down so that s > q removes exactly the entries the exact quantile removes
        assert torch.equal(sim[i][mask[i]] > host[i], sim[i][mask[i]].double() > ref)


def _torch_update(rule, alpha, binomial, two_views, rows, lam, above, total, first):
    """GloFND's per-id update written with torch ops (the reference for the numpy one)."""
    _, m, v, visits = rows.unbind(1)
    g = lam.shape[0]
    pool = (lambda x: x[:g] + x[g:]) if two_views else (lambda x: x)
    n = pool(total).clamp_min(1.0)
    grad = alpha - pool(above) / n
    new_lam, new_m, new_v = rule.step(lam, m, v, grad, visits, bias_correction=not binomial)
    if first is not None:
        new_lam = torch.where(first, lam, new_lam)
        new_m = torch.where(first, m, new_m)
        new_v = torch.where(first, alpha * (1.0 - alpha) / n if binomial else v, new_v)
    return new_lam, torch.stack([new_lam, new_m, new_v, visits + 1], dim=1)


@pytest.mark.parametrize("g", [1, 7, 37, 256])
@pytest.mark.parametrize(
    "rule,binomial",
    [
        (ThresholdRule("adam", "batch_quantile"), False),
        (ThresholdRule("adam", "batch_quantile"), True),
        (ThresholdRule("adam", "one", lr=0.2), False),
        (ThresholdRule("sgd", "one", lr=3.0), False),
    ],
)
@pytest.mark.parametrize("two_views", [True, False])
def test_host_update_equals_torch_update(g, rule, binomial, two_views):
    gen = torch.Generator().manual_seed(g)
    a = 2 * g if two_views else g
    for trial in range(40):
        visits = torch.randint(0, 3 if trial % 2 else 400, (g,), generator=gen).float()
        rows = torch.stack(
            [
                torch.rand(g, generator=gen) * 2 - 1,
                0.1 * torch.randn(g, generator=gen),
                0.02 * torch.rand(g, generator=gen) ** 2,
                visits,
            ],
            dim=1,
        )
        lam = rows[:, 0].clone()
        total = torch.randint(0, 90, (a,), generator=gen).float()  # 0: a row without negatives
        above = (torch.rand(a, generator=gen) * (total + 1)).floor().clamp(max=total)
        first = (visits == 0) if bool((visits == 0).any()) else None
        args = (rule, 0.07, binomial, two_views, rows, lam, above, total, first)
        got_lam, got_rows = host_threshold_update(*args)
        ref_lam, ref_rows = _torch_update(*args)
        assert _bits_equal(got_lam, ref_lam) and _bits_equal(got_rows, ref_rows)
        assert np.isfinite(got_rows.numpy()).all()


class _KeepEverything(FalseNegativeDetector):
    """Keeps every entry, but is not NoDetector (so the objective takes the keep-mask path)."""

    def forward(self, batch, ctx):
        return torch.ones_like(batch.neg_mask)


def _run(objective, steps, b, d, n, dtype, labels, epochs=(0,), seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=g, dtype=torch.float64)
    out = []
    for s in range(steps):
        ids = torch.randperm(n, generator=g)[:b]
        lab = ids % 4
        a = (centers[lab] + 0.6 * torch.randn(b, d, generator=g, dtype=torch.float64)).to(dtype)
        c = (centers[lab] + 0.6 * torch.randn(b, d, generator=g, dtype=torch.float64)).to(dtype)
        a.requires_grad_()
        c.requires_grad_()
        ctx = StepContext(epoch=epochs[s * len(epochs) // steps], step=s)
        res = objective(a, c, ids, labels=lab if labels else None, logit_scale=5.0, ctx=ctx)
        res.loss.backward()
        out.append([res.loss.detach(), res.value, a.grad, c.grad, *res.keep_masks.values()])
    state = [v.clone() for v in objective.state_dict().values() if isinstance(v, torch.Tensor)]
    return out, state, objective.epoch_diagnostics()


def _assert_same_runs(x, y):
    steps_x, state_x, diag_x = x
    steps_y, state_y, diag_y = y
    for sx, sy in zip(steps_x, steps_y, strict=True):
        assert all(_bits_equal(p, q) for p, q in zip(sx, sy, strict=True))
    assert all(_bits_equal(p, q) for p, q in zip(state_x, state_y, strict=True))
    assert diag_x.keys() == diag_y.keys()
    nan = math.isnan
    same = [diag_x[k] == diag_y[k] or (nan(diag_x[k]) and nan(diag_y[k])) for k in diag_x]
    assert all(same)


@pytest.mark.parametrize(
    "mode,kwargs,epochs",
    [
        ("image_image", dict(init="batch_quantile"), (0,)),
        ("image_image", dict(init="one", optimizer="sgd", lr=2.0), (0,)),
        ("image_image", dict(init="batch_quantile", moment_init="binomial"), (0,)),
        ("image_image", dict(init="batch_quantile", start_epoch=1, update_start_epoch=0), (0, 1)),
        ("image_image", dict(init="one", optimizer="sgd", lr=50.0, alpha=0.9), (0,)),  # rescues
        ("image_text", dict(init="batch_quantile"), (0,)),
        ("image_text", dict(init="one", start_epoch=1, update_start_epoch=0), (0, 1)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_glofnd_objective_host_update_equals_torch_update(mode, kwargs, epochs, dtype):
    n, b = 40, 12
    runs = []
    for host in (True, False):
        kw = dict(alpha=0.1, **kwargs) if "alpha" not in kwargs else dict(kwargs)
        detector = GloFNDDetector(n, mode=mode, **kw)
        detector.host_update = host
        loss = GlobalContrastiveLoss(n, mode=mode)
        objective = ContrastiveObjective(mode, loss, detector, num_samples=n)
        runs.append(_run(objective, 12, b, 6, n, dtype, labels=True, epochs=epochs))
    _assert_same_runs(*runs)
    removed = runs[0][2]["removed_fraction"]
    assert removed > 0 if epochs[-1] >= kwargs.get("start_epoch", 0) else removed == 0


@pytest.mark.parametrize("mode", ["image_image", "image_text"])
@pytest.mark.parametrize(
    "make_loss", [GlobalContrastiveLoss, lambda n, mode: DebiasedLoss(eta=0.1)]
)
def test_no_detector_equals_an_explicit_keep_everything_detector(mode, make_loss):
    n, b = 30, 10  # b not a multiple of 64: the per-direction CLIP path
    runs = []
    for detector in (None, _KeepEverything()):
        loss = make_loss(n, mode=mode)
        objective = ContrastiveObjective(mode, loss, detector, num_samples=n)
        runs.append(_run(objective, 6, b, 5, n, torch.float32, labels=True))
    _assert_same_runs(*runs)


def test_table_write_stores_finite_rows_and_keeps_stored_values_for_nonfinite_ones():
    table = SampleTable(10, ("a", "b"), [1.0, 2.0])
    ids = torch.tensor([3, 7, 1])
    table.write(ids, torch.tensor([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]))  # all finite
    assert table.read(torch.tensor([3, 7, 1, 0])).tolist() == [
        [5.0, 6.0],
        [7.0, 8.0],
        [9.0, 10.0],
        [1.0, 2.0],
    ]
    bad = torch.tensor([[float("nan"), 0.0], [0.5, 0.25], [1.0, float("-inf")]])
    table.write(ids, bad)  # row 7 is stored, rows 3 and 1 keep their values
    assert table.read(ids).tolist() == [[5.0, 6.0], [0.5, 0.25], [9.0, 10.0]]
