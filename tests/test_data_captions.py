"""Captions: determinism per (id, seed), style properties, prompt templates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from debiascl.data.builtin import FASHION_MNIST_CLASSES
from debiascl.data.captions import (
    class_prompts,
    make_captions,
    prompt_templates,
    template_indices,
    templates,
    templates_per_class,
    with_article,
)
from debiascl.errors import DataError

NAMES = list(FASHION_MNIST_CLASSES)


def _data(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, size=n), np.arange(n)


def test_examples_and_articles() -> None:
    assert with_article("sneaker") == "a sneaker"
    assert with_article("ankle boot") == "an ankle boot"
    labels, ids = _data(400)
    caps = make_captions(NAMES, labels, ids, "default", seed=0)
    assert "a photo of a sneaker." in caps
    assert "a black-and-white picture of an ankle boot." in caps
    assert all(c.endswith(".") for c in caps)
    for c, y in zip(caps, labels, strict=True):
        assert NAMES[y] in c


def test_deterministic_per_id_and_seed() -> None:
    labels, ids = _data(300)
    a = make_captions(NAMES, labels, ids, "default", seed=7)
    assert a == make_captions(NAMES, labels, ids, "default", seed=7)
    # A caption depends only on (id, class, seed): the same ids in another order or subset agree.
    perm = np.random.default_rng(1).permutation(300)[:100]
    sub = make_captions(NAMES, labels[perm], ids[perm], "default", seed=7)
    assert sub == [a[i] for i in perm]
    b = make_captions(NAMES, labels, ids, "default", seed=8)
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 150  # ~7/8 differ


def test_default_style_is_varied_and_roughly_uniform() -> None:
    labels, ids = _data(8000)
    idx = template_indices(labels, ids, 10, "default", seed=0)
    assert 6 <= len(templates("default")) <= 8
    counts = np.bincount(idx, minlength=len(templates("default")))
    expected = len(ids) / len(counts)
    assert np.all(np.abs(counts - expected) < 0.15 * expected)
    caps = make_captions(NAMES, labels, ids, "default", seed=0)
    assert len(set(caps)) == 10 * len(templates("default"))


def test_single_style_one_caption_per_class() -> None:
    labels, ids = _data(500)
    caps = make_captions(NAMES, labels, ids, "single", seed=3)
    assert len(set(caps)) == 10
    assert {c for c, y in zip(caps, labels, strict=True) if y == 7} == {"a photo of a sneaker."}


def test_skewed_style_diversity_differs_across_classes() -> None:
    labels, ids = _data(20000)
    caps = make_captions(NAMES, labels, ids, "skewed", seed=0)
    per_class = [len({c for c, y in zip(caps, labels, strict=True) if y == k}) for k in range(10)]
    assert per_class == templates_per_class(10, "skewed").tolist()
    assert per_class[0] == 1 and per_class[-1] == 16
    assert per_class == sorted(per_class)
    # Caption frequencies span a wide range: class 0's single caption is ~10% of the data,
    # each caption of the last class ~0.6%.
    freq = Counter(caps)
    top, bottom = max(freq.values()), min(freq.values())
    assert top / len(caps) > 0.08
    assert bottom / len(caps) < 0.01
    assert top / bottom > 10


def test_prompt_templates_and_class_prompts() -> None:
    prompts = prompt_templates()
    assert len(prompts) >= 6 and all("{}" in p for p in prompts)
    table = class_prompts(NAMES)
    assert len(table) == 10 and all(len(row) == len(prompts) for row in table)
    assert table[9][1] == "a black-and-white picture of an ankle boot."
    # Zero-shot prompts cover exactly the captions used in default-style training.
    labels, ids = _data(2000)
    assert set(make_captions(NAMES, labels, ids, "default", seed=0)) == {
        p for r in table for p in r
    }


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="class label"):
        make_captions(NAMES, [0, 10], [0, 1])
    with pytest.raises(DataError, match="class label"):
        make_captions(NAMES, [-1, 0], [0, 1])
    with pytest.raises(DataError):
        make_captions(NAMES, [0, 1], [0])
