"""One batch-quantile rule for FNC and GloFND's quantile initialisation (issue 10, item 11).

The rule (``debiascl.negatives.thresholds``): q = numpy's default (linear) (1 - alpha)-quantile
of a row's negatives, remove s > q. With distinct similarities that removes ceil(alpha (n - 1))
per row: SimCLR batch 8 has n = 14 negatives per row, so alpha = 0.1 removes 2 (the old
round(alpha n) rule removed 1) and alpha = 0.01 removes 1 with a warning (the old rule removed
nothing, silently). References are float64 numpy/torch quantiles written here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from debiascl.negatives.fnc import FNCDetector
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.single import SingleThresholdDetector
from debiascl.negatives.thresholds import batch_quantile, removal_count
from debiascl.objectives import StepContext
from debiascl.pairs import clip_pairs, simclr_pairs


def simclr_batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return simclr_pairs(
        torch.randn(b, 6, generator=g), torch.randn(b, 6, generator=g), torch.arange(b)
    )


def removed_per_row(keep: torch.Tensor, neg_mask: torch.Tensor) -> list[int]:
    return ((~keep) & neg_mask).sum(1).tolist()


def test_fnc_batch8_alpha_01_removes_two_per_row_like_numpy():
    batch = simclr_batch()
    assert int(batch.neg_mask.sum(1).min()) == 14
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.1 x 14 >= 1: no warning
        keep = FNCDetector(0.1)(batch, StepContext())
    assert removed_per_row(keep, batch.neg_mask) == [2] * 16
    sim = batch.sim.detach().double().numpy()
    for r in range(16):
        negs = batch.neg_mask[r].numpy()
        q = np.quantile(sim[r, negs], 0.9)
        np.testing.assert_array_equal(keep[r].numpy()[negs], sim[r, negs] <= q)


def test_fnc_alpha_001_warns_and_removes_what_the_rule_says():
    batch = simclr_batch(seed=1)
    with pytest.warns(UserWarning, match=r"alpha=0.01 x 14 negatives .* cannot resolve"):
        keep = FNCDetector(0.01)(batch, StepContext())
    assert removed_per_row(keep, batch.neg_mask) == [math.ceil(0.01 * 13)] * 16 == [1] * 16


def test_glofnd_quantile_init_uses_the_same_rule_as_fnc():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    i2t, _ = clip_pairs(img, txt, torch.arange(8))  # n = 7 negatives per row
    fnc = FNCDetector(0.3)(i2t, StepContext())
    det = GloFNDDetector(
        8, 0.3, mode="image_text", directions=("image_to_text",), init="batch_quantile"
    )
    glofnd = det(i2t, StepContext())
    negs = i2t.neg_mask  # keep-masks only matter on the negatives
    assert torch.equal(fnc & negs, glofnd & negs)
    assert removed_per_row(fnc, i2t.neg_mask) == [math.ceil(0.3 * 6)] * 8
    sim = i2t.sim.detach().double()
    want = torch.stack([torch.quantile(sim[r][i2t.neg_mask[r]], 0.7) for r in range(8)])
    torch.testing.assert_close(det.thresholds("image_to_text", torch.arange(8)).double(), want)


def test_glofnd_and_single_quantile_init_warn_when_alpha_is_unresolvable():
    batch = simclr_batch(seed=3)
    with pytest.warns(UserWarning, match="cannot resolve"):
        GloFNDDetector(8, 0.01, init="batch_quantile")(batch, StepContext())
    with pytest.warns(UserWarning, match="cannot resolve"):
        SingleThresholdDetector(0.01, init="batch_quantile")(batch, StepContext())


@pytest.mark.parametrize("n,alpha", [(14, 0.1), (28, 0.05), (7, 0.3), (100, 0.25), (256, 0.05)])
def test_batch_quantile_matches_torch_and_removes_ceil_alpha_n_minus_1(n, alpha):
    g = torch.Generator().manual_seed(n)
    sim = torch.rand(5, n + 3, generator=g) * 2 - 1
    mask = torch.ones_like(sim, dtype=torch.bool)
    mask[:, :3] = False  # three non-negatives per row, ignored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = batch_quantile(sim, mask, alpha)
    ref = torch.quantile(sim[:, 3:].double(), 1 - alpha, dim=1)
    torch.testing.assert_close(q.double(), ref, atol=1e-6, rtol=0)
    above = ((sim > q[:, None]) & mask).sum(1)
    assert above.tolist() == [math.ceil(alpha * (n - 1) - 1e-9)] * 5
    assert removal_count(torch.tensor([n]), alpha).item() == math.ceil(alpha * (n - 1) - 1e-9)


def test_ties_at_the_cut_are_kept_together():
    sim = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1, 0.0]])
    mask = torch.ones_like(sim, dtype=torch.bool)
    # d = 0.5 * 5 = 2.5: between the 3rd and 4th largest, both 0.5 -> q = 0.5, only 0.9 goes
    q = batch_quantile(sim, mask, 0.5)
    assert q.item() == 0.5 == float(np.quantile(sim.double().numpy(), 0.5))
    from debiascl.negatives.fnc import batch_top_alpha_keep

    assert batch_top_alpha_keep(sim, mask, 0.5).tolist() == [[False, True, True, True, True, True]]
