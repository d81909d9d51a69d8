"""``data.validation_size``: a held-out part of the training split to choose settings on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debiascl.config import load_config
from debiascl.data.build import assemble_data
from debiascl.data.datasets import TensorImageDataset
from debiascl.errors import ConfigError


def _pool(n: int = 120, classes: int = 3) -> TensorImageDataset:
    # every image is unique: its first pixels spell its row number, so rows can be traced
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    labels = np.arange(n) % classes
    return TensorImageDataset(images, labels=labels, class_names=["a", "b", "c"][:classes])


def _rows(ds: TensorImageDataset) -> set[int]:
    img = ds.images[:, 0, 0, :2].to(torch.int64)
    return set((img[:, 0] + 256 * img[:, 1]).tolist())


def test_validation_rows_are_disjoint_stratified_and_seed_independent() -> None:
    test = _pool(30)
    a = assemble_data(_pool(), test, seed=1, validation_size=30, train_size=60, image_size=8)
    b = assemble_data(_pool(), test, seed=2, validation_size=30, train_size=60, image_size=8)
    assert a.eval_split == "validation"
    assert len(a.test) == 30 and len(a.train) == 60
    # the validation rows: same for every run seed, never among any run's training rows
    assert _rows(a.test) == _rows(b.test)
    assert not _rows(a.test) & _rows(a.train)
    assert not _rows(b.test) & _rows(b.train)
    # the training subset still follows the run seed
    assert _rows(a.train) != _rows(b.train)
    # class-stratified: 10 per class out of 3 balanced classes
    assert np.bincount(a.test.labels.numpy()).tolist() == [10, 10, 10]
    # without it, evaluation is on the test split
    c = assemble_data(_pool(), test, seed=1, train_size=60, image_size=8)
    assert c.eval_split == "test" and _rows(c.test) == _rows(test)


def test_validation_captions_do_not_depend_on_the_run_seed() -> None:
    kw = dict(validation_size=30, image_size=8, mode="image_text")
    a = assemble_data(_pool(), None, seed=1, **kw)
    b = assemble_data(_pool(), None, seed=7, **kw)
    assert a.test.texts == b.test.texts
    assert a.train.texts != b.train.texts


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"validation_size": 120}, "leaves no training samples"),
        ({"validation_size": 10, "test_size": 5}, "unset one of them"),
    ],
)
def test_bad_validation_settings_are_one_line_errors(kw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        assemble_data(_pool(), _pool(30), seed=0, image_size=8, **kw)
    assert "\n" not in str(err.value)


def test_validation_size_is_part_of_the_data_fingerprint() -> None:
    from debiascl.compose.fingerprint import data_fingerprint

    cfg = load_config("fmnist_simclr", ["data.validation_size=500"])
    assert data_fingerprint(cfg)["data.validation_size"] == 500
    assert "data.validation_size" not in data_fingerprint(load_config("fmnist_simclr", []))
