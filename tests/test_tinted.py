"""The synthetic colour x garment dataset (``tinted_fashion_mnist``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debiascl.compose.data import build_data
from debiascl.config import load_config
from debiascl.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from debiascl.data.tinted import COLOURS, colour_indices, tint, tinted_fashion_mnist

NINE = "[red pullover,red coat,red shirt,green pullover,green coat,green shirt,blue pullover,blue coat,blue shirt]"  # noqa: E501


def test_tint_matches_a_float64_reference():
    gen = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (5, 1, 4, 3), generator=gen, dtype=torch.uint8)
    colours = np.array([0, 1, 2, 1, 0])
    got = tint(grey, colours)
    weights = list(COLOURS.values())
    want = np.zeros((5, 3, 4, 3))
    for n in range(5):
        for ch in range(3):
            for i in range(4):
                for j in range(3):
                    want[n, ch, i, j] = round(float(grey[n, 0, i, j]) * weights[colours[n]][ch])
    assert got.dtype == torch.uint8 and got.shape == (5, 3, 4, 3)
    np.testing.assert_array_equal(got.numpy(), want.astype(np.uint8))


def test_labels_name_the_colour_seen_in_the_pixels_and_the_garment():
    train, test = tinted_fashion_mnist()
    grey, garments = load_fashion_mnist("test")
    assert len(test) == len(garments) and len(train) == 60_000
    labels = test.labels.numpy()
    np.testing.assert_array_equal(labels % 10, garments.numpy())
    # the brightest channel of the bright pixels is the named colour's strongest weight
    images = test.images[:500].float()
    bright = grey[:500, 0] > 100
    channel = images.sum(dim=(2, 3)).argmax(dim=1).numpy()
    strongest = np.array([np.argmax(w) for w in COLOURS.values()])
    assert bright.any(dim=(1, 2)).all()
    np.testing.assert_array_equal(channel, strongest[labels[:500] // 10])
    colour, garment = list(COLOURS)[labels[0] // 10], FASHION_MNIST_CLASSES[labels[0] % 10]
    assert test.class_names[labels[0]] == f"{colour} {garment.replace('_', ' ')}"
    # fixed per split: the same colours on every call, different between splits
    np.testing.assert_array_equal(colour_indices("test", 100), colour_indices("test", 100))
    assert (colour_indices("train", 100) != colour_indices("test", 100)).any()
    assert set(np.unique(labels // 10)) == set(range(len(COLOURS)))


def test_single_captions_are_identical_exactly_within_a_class():
    cfg = load_config(
        "fmnist_clip_glofnd",
        [
            "data.dataset=tinted_fashion_mnist",
            "data.channels=3",
            "data.caption_templates=single",
            f"data.classes={NINE}",
            "data.train_size=600",
        ],
    )
    bundle = build_data(cfg.data, seed=3)
    texts = np.array(bundle.train.texts)
    labels = bundle.train.labels.numpy()
    same_text = texts[:, None] == texts[None, :]
    same_label = labels[:, None] == labels[None, :]
    np.testing.assert_array_equal(same_text, same_label)
    assert len(bundle.class_names) == 9 and bundle.train.images.shape[1] == 3
    assert texts[0] == f"a photo of a {bundle.class_names[labels[0]]}."


def test_an_unknown_colour_class_is_refused_with_the_valid_names():
    cfg = load_config(
        "fmnist_clip_glofnd",
        ["data.dataset=tinted_fashion_mnist", "data.channels=3", "data.classes=[purple coat]"],
    )
    with pytest.raises(Exception, match="purple coat"):
        build_data(cfg.data, seed=0)
