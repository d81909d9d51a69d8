"""NT-Xent and CLIP losses against plain float64 references and lightly's NTXentLoss."""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.errors import DebiasclError
from debiascl.losses import clip_loss, masked_info_nce, nt_xent
from loss_references import reference_clip, reference_nt_xent


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_nt_xent_matches_reference(t: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(z1.double(), z2.double(), t).item() == pytest.approx(
        reference_nt_xent(z1, z2, t), rel=1e-10
    )


def test_nt_xent_keep_mask_removes_negatives() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    keep = torch.rand(10, 10, generator=g) > 0.4
    got = nt_xent(z1.double(), z2.double(), 0.3, keep_mask=keep).item()
    assert got == pytest.approx(reference_nt_xent(z1, z2, 0.3, keep), rel=1e-10)
    assert got != pytest.approx(nt_xent(z1.double(), z2.double(), 0.3).item(), rel=1e-6)


def test_nt_xent_matches_lightly() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    for t in (0.1, 0.5):
        ours = nt_xent(z1, z2, t)
        theirs = lightly_loss.NTXentLoss(temperature=t)(z1, z2)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_nt_xent_gradient_matches_lightly() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(3)
    base1, base2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    grads = []
    for fn in (lambda a, b: nt_xent(a, b, 0.2), lightly_loss.NTXentLoss(temperature=0.2)):
        a, b = base1.clone().requires_grad_(), base2.clone().requires_grad_()
        fn(a, b).backward()
        grads.append(torch.cat([a.grad, b.grad]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 14.3])
def test_clip_loss_matches_reference(scale: float) -> None:
    g = torch.Generator().manual_seed(4)
    img, txt = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    assert clip_loss(img.double(), txt.double(), scale).item() == pytest.approx(
        reference_clip(img, txt, scale), rel=1e-10
    )


def test_clip_loss_learnable_scale_gets_gradient() -> None:
    scale = torch.tensor(5.0, requires_grad=True)
    clip_loss(torch.randn(4, 3), torch.randn(4, 3), scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 0


def test_masked_info_nce_is_stable_at_low_temperature() -> None:
    logits = torch.full((3, 4), 200.0)
    out = masked_info_nce(torch.full((3,), 200.0), logits, torch.ones(3, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((3,), math.log(5.0)))


def test_bad_shapes_and_masks_are_clear_errors() -> None:
    with pytest.raises(DebiasclError, match="same shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(DebiasclError, match="keep_mask"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), keep_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(DebiasclError, match="temperature"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)
