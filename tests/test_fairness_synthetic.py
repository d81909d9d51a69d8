"""The synthetic sensitive-attribute benchmark on Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debiascl.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from debiascl.data.captions import make_captions
from debiascl.data.synthetic_attr import (
    SYNTHETIC_ATTRIBUTE,
    load_synthetic_attr,
    render_attribute,
    synthetic_attribute,
)
from debiascl.errors import ConfigError
from debiascl.eval.fairness_audit import leakage_probe


@pytest.fixture(scope="module")
def fmnist_test():
    return load_fashion_mnist("test")


def test_attribute_correlation_and_stability():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 20000)
    ids = np.arange(20000)
    a = synthetic_attribute(labels, ids, 0.8, seed=1, id_space=20000)
    even = labels % 2 == 0
    assert a[even].mean() == pytest.approx(0.8, abs=0.02)
    assert a[~even].mean() == pytest.approx(0.2, abs=0.02)
    # a sample's attribute does not depend on which other ids are loaded
    sub = ids[::7]
    assert np.array_equal(synthetic_attribute(labels[sub], sub, 0.8, 1, id_space=20000), a[sub])
    assert not np.array_equal(synthetic_attribute(labels, ids, 0.8, 2, id_space=20000), a)
    indep = synthetic_attribute(labels, ids, 0.5, 1, id_space=20000)
    assert abs(indep[even].mean() - indep[~even].mean()) < 0.03
    with pytest.raises(ConfigError):
        synthetic_attribute(labels, ids, 1.5, 1)


def test_rendering_border_and_tint():
    img = torch.randint(0, 200, (4, 1, 28, 28), dtype=torch.uint8)
    a = torch.tensor([0, 1, 0, 1])
    b = render_attribute(img, a, "border", width=2)
    assert torch.equal(b[a == 0], img[a == 0])
    frame = torch.ones(28, 28, dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    assert (b[1, 0][frame] == 255).all() and torch.equal(b[1, 0][~frame], img[1, 0][~frame])
    t = render_attribute(img, a, "tint")
    expect = (80 + img[1].double() * 175 / 255).round().to(torch.uint8)
    assert torch.equal(t[1], expect) and torch.equal(t[0], img[0])
    with pytest.raises(ConfigError):
        render_attribute(img, a, "stripes")


def test_split_contents_captions_and_dataset(fmnist_test):
    d = load_synthetic_attr("test", correlation=0.9, size=500, seed=3)
    images, labels = fmnist_test
    ids = d.ids
    assert torch.equal(d.labels, labels[ids])
    assert d.attribute_name == SYNTHETIC_ATTRIBUTE and "SYNTHETIC" in d.note
    unmarked = d.attrs == 0
    assert torch.equal(d.images[unmarked], images[ids][unmarked])
    assert (d.images[~unmarked][:, :, 0, :] == 255).all()
    assert d.captions == make_captions(
        FASHION_MNIST_CLASSES, d.labels.numpy(), ids.numpy(), "default", 3
    )
    for word in ("border", "frame", "tint", "mark", "bright"):
        assert not any(word in c for c in d.captions)
    ds = d.dataset()
    item = ds[0]
    assert item["attrs"].tolist() == [int(d.attrs[0])] and item["text"] == d.captions[0]
    assert ds.attr_names == [SYNTHETIC_ATTRIBUTE]


def test_raw_pixels_leak_the_synthetic_attribute():
    tr = load_synthetic_attr("test", correlation=0.5, size=600, seed=0, subset_seed=1)
    x = tr.images.flatten(1).float().numpy() / 255
    res = leakage_probe(x[:400], tr.attrs[:400], x[400:], tr.attrs[400:])
    assert res["accuracy"] > 0.95  # the mark is linearly decodable from pixels
