"""Half-precision embeddings with a zero row: normalisation happens in float32 (issue 10, item 9).

``F.normalize`` in float16 divides by max(||x||, 1e-12) and 1e-12 is 0 in float16, so a zero row
became 0/0 = NaN and every loss or metric that read it was NaN. The references below are plain
float64 loops on the same (half-rounded) inputs, where a zero row has cosine 0 with everything.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debiascl.eval import knn_scores, retrieval_eval, zero_shot_scores
from debiascl.losses import clip_loss, nt_xent
from debiascl.numerics import unit_rows
from debiascl.pairs import simclr_pairs
from loss_references import reference_clip, reference_nt_xent, unit64


@pytest.fixture
def zero_row_pair() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    z1[0] = 0
    return z1, z2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nt_xent_half_zero_row_is_finite(zero_row_pair, dtype) -> None:
    z1, z2 = zero_row_pair
    got = nt_xent(z1.to(dtype), z2.to(dtype), 0.1)
    rounded = (z1.to(dtype).float(), z2.to(dtype).float())
    assert torch.isfinite(got)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(nt_xent(*rounded, 0.1).item(), rel=1e-6)
    assert got.item() == pytest.approx(reference_nt_xent(*rounded, 0.1), rel=1e-5)
    if dtype == torch.float16:  # the numbers: the float32 loss on the unrounded inputs
        assert got.item() == pytest.approx(nt_xent(z1, z2, 0.1).item(), abs=2e-3)
        assert nt_xent(z1, z2, 0.1).item() == pytest.approx(3.6551, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_clip_half_zero_row_is_finite(zero_row_pair, dtype) -> None:
    z1, z2 = zero_row_pair
    got = clip_loss(z1.to(dtype), z2.to(dtype), 100.0)
    rounded = (z1.to(dtype).float(), z2.to(dtype).float())
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(clip_loss(*rounded, 100.0).item(), rel=1e-6)
    assert got.item() == pytest.approx(reference_clip(*rounded, 100.0), rel=1e-5)
    if dtype == torch.float16:
        assert got.item() == pytest.approx(clip_loss(z1, z2, 100.0).item(), abs=1e-2)
        assert clip_loss(z1, z2, 100.0).item() == pytest.approx(26.5526, abs=1e-3)


def test_unit_rows_keeps_zero_rows_and_large_half_rows() -> None:
    x = torch.tensor([[0.0, 0.0], [300.0, 400.0], [3e-4, 4e-4]], dtype=torch.float16)
    # ||(300, 400)||^2 = 250000 overflows float16 (max 65504); 3e-4 squared underflows it.
    got = unit_rows(x)
    ref = unit64(x.float())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), ref.numpy(), atol=1e-3)
    assert unit_rows(torch.ones(2, 3, dtype=torch.float64)).dtype == torch.float64


def test_pairwise_similarities_of_half_inputs_have_no_nan(zero_row_pair) -> None:
    z1, z2 = zero_row_pair
    batch = simclr_pairs(z1.half(), z2.half(), torch.arange(8))
    assert torch.isfinite(batch.sim).all()
    assert batch.sim[0].abs().max() == 0  # the zero row has cosine 0 with every candidate


def test_eval_metrics_accept_half_zero_rows(zero_row_pair) -> None:
    z1, z2 = zero_row_pair
    out = retrieval_eval(z1.half(), z2.half())
    ref = retrieval_eval(z1.half().double(), z2.half().double())
    assert out == ref
    scores = knn_scores(z1.half(), torch.arange(8) % 2, z2.half(), k=3)
    assert torch.isfinite(scores).all()
    logits = zero_shot_scores(z1.half(), z2[:3].half())
    assert torch.isfinite(logits).all() and logits[0].abs().max() == 0


@pytest.mark.parametrize("mode", ["image_image", "image_text"])
def test_every_registered_loss_is_finite_on_half_zero_rows(zero_row_pair, mode, tmp_path) -> None:
    from debiascl.compose import build_objective
    from debiascl.config.schema import RunConfig
    from debiascl.data.info import DatasetInfo
    from debiascl.registry import LOSSES

    z1, z2 = zero_row_pair
    labels = torch.arange(8) % 4
    info = DatasetInfo(num_samples=8, labels=labels, texts=[f"class {int(c)}" for c in labels])
    for loss in LOSSES.names():
        values = []
        for a, b in ((z1.half(), z2.half()), (z1.half().float(), z2.half().float())):
            cfg = RunConfig(output_dir=str(tmp_path))
            cfg.data.mode, cfg.loss.name = mode, loss
            if loss == "ssd":
                cfg.loss.ssd = {"eta_source": "class_frequency"}
            out = build_objective(cfg, info)(a, b, torch.arange(8), labels=labels)
            values.append(out.value)
        assert torch.isfinite(values[0]), loss
        assert values[0].item() == pytest.approx(values[1].item(), rel=1e-5), loss
