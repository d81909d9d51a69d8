"""Batched kornia augmentation: shapes, per-sample independence, reproducibility, eval transform."""

from __future__ import annotations

import pytest
import torch

from debiascl.compose import build_augment
from debiascl.config.schema import DataConfig
from debiascl.data.augment import (
    EvalTransform,
    SingleViewAugment,
    TwoViewAugment,
)
from debiascl.errors import DataError


def _batch(b: int = 16, c: int = 1, s: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("strength", ["simclr", "light", "none"])
@pytest.mark.parametrize(("c_in", "c_out"), [(1, 1), (1, 3), (3, 3), (3, 1)])
def test_shapes_and_dtypes(strength: str, c_in: int, c_out: int) -> None:
    aug = TwoViewAugment(20, c_out, strength, blur=strength == "simclr")
    v1, v2 = aug(_batch(6, c_in, 12))
    for v in (v1, v2):
        assert v.shape == (6, c_out, 20, 20) and v.dtype == torch.float32
        assert torch.isfinite(v).all()
        # Normalised with mean 0.5, std 0.5: values of [0, 1] images lie in [-1, 1].
        assert float(v.min()) >= -1.0 - 1e-5 and float(v.max()) <= 1.0 + 1e-5
    single = SingleViewAugment(20, c_out, strength)(_batch(6, c_in, 12))
    assert single.shape == (6, c_out, 20, 20) and single.dtype == torch.float32


def test_views_are_independent_per_sample() -> None:
    one = _batch(1, 3, 28)
    batch = one.expand(64, -1, -1, -1).contiguous()  # the same image 64 times
    torch.manual_seed(0)
    v1, v2 = TwoViewAugment(28, 3, "simclr")(batch)
    flat1 = v1.flatten(1)
    distinct = {tuple(torch.round(row * 1e4).tolist()) for row in flat1}
    assert len(distinct) > 60  # independent random parameters for each sample
    assert not torch.allclose(v1, v2)  # the two views differ
    per_sample_diff = (v1 - v2).flatten(1).abs().mean(1)
    assert int((per_sample_diff > 1e-3).sum()) > 60


def test_reproducible_under_a_seed() -> None:
    aug = TwoViewAugment(28, 1, "simclr", blur=True)
    x = _batch(8)
    torch.manual_seed(123)
    a1, a2 = aug(x)
    torch.manual_seed(123)
    b1, b2 = aug(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    torch.manual_seed(124)
    c1, _ = aug(x)
    assert not torch.equal(a1, c1)
    # seed= gives the same views and leaves the global RNG untouched.
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    s1, s2 = aug(x, seed=77)
    assert torch.equal(torch.rand(3), expected_next)
    t1, t2 = aug(x, seed=77)
    assert torch.equal(s1, t1) and torch.equal(s2, t2)


def test_eval_transform_is_plain_normalisation() -> None:
    x = _batch(4, 1, 28)
    out = EvalTransform(28, 1)(x)
    ref = (x.double() / 255.0 - 0.5) / 0.5
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.equal(EvalTransform(28, 1)(x), out)  # deterministic
    # A constant image stays constant through the resize; 1 -> 3 channels repeats.
    const = torch.full((2, 1, 8, 8), 51, dtype=torch.uint8)
    up = EvalTransform(28, 3, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 1.0])(const)
    assert up.shape == (2, 3, 28, 28)
    for ch, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 1.0)]):
        assert torch.allclose(up[:, ch], torch.full_like(up[:, ch], (0.2 - m) / s), atol=1e-5)


def test_rgb_to_grey_uses_luma() -> None:
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 200, 100, 50
    out = EvalTransform(4, 1, mean=0.0, std=1.0)(x)
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert torch.allclose(out, torch.full_like(out, expected), atol=1e-6)


def test_none_strength_matches_eval_transform() -> None:
    x = _batch(5, 1, 28)
    v1, v2 = TwoViewAugment(28, 1, "none")(x)
    ev = EvalTransform(28, 1)(x)
    assert torch.allclose(v1, ev) and torch.allclose(v2, ev)


def test_jitter_changes_brightness_per_sample() -> None:
    grey = torch.full((200, 1, 16, 16), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    v, _ = TwoViewAugment(16, 1, "simclr")(grey)
    means = v.flatten(1).mean(1)
    # Jitter is applied with p = 0.8: some samples unchanged (0.0039 = 128/255 normalised),
    # most moved.
    unchanged = (means - (128 / 255 - 0.5) / 0.5).abs() < 1e-4
    assert 0.05 < float(unchanged.float().mean()) < 0.4
    assert float(means.std()) > 0.05


def test_runs_in_float32_inside_autocast() -> None:
    aug = TwoViewAugment(28, 1, "simclr")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v1, _ = aug(_batch(4))
    assert v1.dtype == torch.float32


def test_bad_input_and_build_augment() -> None:
    with pytest.raises(DataError, match="uint8"):
        TwoViewAugment(28, 1)(torch.rand(2, 1, 28, 28))
    with pytest.raises(DataError, match=r"\(b, C, H, W\)"):
        EvalTransform(28, 1)(torch.zeros(1, 28, 28, dtype=torch.uint8))
    two = build_augment(DataConfig())
    assert isinstance(two, TwoViewAugment) and two.strength == "simclr"
    one = build_augment(DataConfig(mode="image_text"))
    assert isinstance(one, SingleViewAugment) and one.strength == "light"
    assert build_augment(DataConfig(mode="image_text", augment="none")).strength == "none"
