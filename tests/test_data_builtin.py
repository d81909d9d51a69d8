"""Built-in data: Fashion-MNIST IDX decoding, digits, subsets and build_data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from debiascl.compose import build_data
from debiascl.config.schema import DataConfig
from debiascl.data.build import stratified_subset
from debiascl.data.builtin import (
    DEFAULT_FASHION_MNIST_ROOT,
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    load_digits_split,
    load_fashion_mnist,
)
from debiascl.data.captions import prompt_templates
from debiascl.data.datasets import TensorImageDataset
from debiascl.errors import ConfigError, DataError
from debiascl.registry import DATASETS

FMNIST = Path(DEFAULT_FASHION_MNIST_ROOT)


def _hand_decode(n: int, split_prefix: str) -> tuple[list[list[int]], list[int], tuple[int, ...]]:
    """The first n images/labels read byte by byte with struct (independent of the loader)."""
    with gzip.open(FMNIST / f"{split_prefix}-images-idx3-ubyte.gz", "rb") as f:
        head = f.read(16)
        magic, count, rows, cols = struct.unpack(">IIII", head)
        assert magic == 2051
        images = [list(f.read(rows * cols)) for _ in range(n)]
    with gzip.open(FMNIST / f"{split_prefix}-labels-idx1-ubyte.gz", "rb") as f:
        magic, count_l = struct.unpack(">II", f.read(8))
        assert magic == 2049
        labels = list(f.read(n))
    return images, labels, (count, rows, cols, count_l)


@pytest.mark.parametrize(
    ("split", "prefix", "size"), [("train", "train", 60000), ("test", "t10k", 10000)]
)
def test_fashion_mnist_matches_hand_decode(split: str, prefix: str, size: int) -> None:
    images, labels = load_fashion_mnist(split)
    hand_images, hand_labels, (count, rows, cols, count_l) = _hand_decode(3, prefix)
    assert images.shape == (count, 1, rows, cols) == (size, 1, 28, 28)
    assert labels.shape == (count_l,)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    for i in range(3):
        assert images[i, 0].reshape(-1).tolist() == hand_images[i]
        assert int(labels[i]) == hand_labels[i]
    assert set(labels.tolist()) == set(range(10))
    assert len(FASHION_MNIST_CLASSES) == 10


def test_fashion_mnist_missing_root_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_fashion_mnist("train", root=tmp_path)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.root" in msg
    assert "train-images-idx3-ubyte.gz" in msg


def test_fashion_mnist_truncated_file_error(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 28, 28) + bytes(28 * 28))  # one image of two
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 2) + bytes([1, 2]))
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist("test", root=tmp_path)


def test_fashion_mnist_custom_root(tmp_path: Path) -> None:
    pixels = np.arange(2 * 28 * 28, dtype=np.int64) % 256
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 28, 28) + bytes(pixels.tolist()))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 2) + bytes([7, 3]))
    images, labels = load_fashion_mnist("test", root=str(tmp_path))
    assert images.reshape(-1).tolist() == pixels.tolist()
    assert labels.tolist() == [7, 3]


def test_digits_shapes_ranges_and_split() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    train_x, train_y = load_digits_split("train")
    test_x, test_y = load_digits_split("test")
    assert train_x.shape == (1347, 1, 8, 8) and test_x.shape == (450, 1, 8, 8)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert int(train_x.max()) == 255 and int(train_x.min()) == 0
    # Every image of the split is an sklearn image scaled by 255/16, and the splits are disjoint.
    scaled = np.rint(ref.images * 255.0 / 16.0).astype(np.uint8).reshape(len(ref.images), -1)
    lookup = {row.tobytes(): i for i, row in enumerate(scaled)}
    rows_train = [lookup[x.numpy().reshape(-1).tobytes()] for x in train_x]
    rows_test = [lookup[x.numpy().reshape(-1).tobytes()] for x in test_x]
    assert ref.target[rows_train].tolist() == train_y.tolist()
    assert ref.target[rows_test].tolist() == test_y.tolist()
    assert not set(rows_train) & set(rows_test)
    # Fixed split: reading again gives the same data.
    again_x, _ = load_digits_split("train")
    assert torch.equal(again_x, train_x)
    assert len(DIGITS_CLASSES) == 10


def test_stratified_subset_keeps_class_shares() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    rows = stratified_subset(labels, 20, seed=3)
    assert rows.size == 20 and np.unique(rows).size == 20
    assert np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows]).tolist() == [10, 6, 3, 1]
    # Largest remainder: 7 of 100 -> exact shares 3.5, 2.1, 1.05, 0.35 -> 3+1, 2, 1, 0
    rows7 = stratified_subset(labels, 7, seed=0)
    assert np.bincount(labels[rows7], minlength=4).tolist() == [4, 2, 1, 0]
    assert np.array_equal(stratified_subset(labels, 20, seed=3), rows)
    assert not np.array_equal(stratified_subset(labels, 20, seed=4), rows)
    with pytest.raises(ConfigError):
        stratified_subset(labels, 101, seed=0)


def test_build_fashion_mnist_subset_reindexes_ids() -> None:
    cfg = DataConfig(dataset="fashion_mnist", train_size=500, test_size=100)
    bundle = build_data(cfg, seed=5)
    full_x, full_y = load_fashion_mnist("train")
    assert len(bundle.train) == 500 and len(bundle.test) == 100
    assert bundle.train.ids.tolist() == list(range(500))
    assert bundle.info.num_samples == 500
    assert torch.equal(bundle.info.labels, bundle.train.labels)
    assert torch.bincount(bundle.train.labels).tolist() == [50] * 10
    assert bundle.class_names == list(FASHION_MNIST_CLASSES)
    assert bundle.info.texts is None
    # Every selected image is an original training image with its original label.
    first = bundle.train[0]
    match = (full_x == first["image"]).flatten(1).all(dim=1).nonzero().flatten()
    assert match.numel() >= 1 and int(full_y[match[0]]) == first["label"]
    # The training subset follows the run seed; the test subset does not.
    other = build_data(cfg, seed=6)
    assert not torch.equal(other.train.images, bundle.train.images)
    assert torch.equal(other.test.images, bundle.test.images)


def test_build_image_text_attaches_captions() -> None:
    cfg = DataConfig(dataset="digits", mode="image_text", train_size=100)
    bundle = build_data(cfg, seed=0)
    assert bundle.info.texts is not None and len(bundle.info.texts) == 100
    item = bundle.train[3]
    assert DIGITS_CLASSES[item["label"]] in item["text"]
    assert bundle.info.texts[item["index"]] == item["text"]
    assert all(
        DIGITS_CLASSES[int(y)] in t
        for y, t in zip(bundle.test.labels, bundle.test.texts, strict=True)
    )


def test_prompt_names_reproduce_training_captions() -> None:
    bundle = build_data(DataConfig(mode="image_text", train_size=400), seed=2)
    assert bundle.prompt_names[9] == "an ankle boot" and bundle.prompt_names[7] == "a sneaker"
    prompts = {t.format(name) for name in bundle.prompt_names for t in prompt_templates()}
    assert set(bundle.info.texts) == prompts


def test_unknown_dataset_is_config_error_listing_the_registry() -> None:
    # the registry is the single source of truth: the config accepts any name, the build names
    # every registered dataset
    with pytest.raises(ConfigError, match="unknown dataset 'nope'.*digits.*synthetic_attr"):
        build_data(DataConfig(dataset="nope"), seed=0)


def test_registered_dataset_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    builders = dict(DATASETS._builders)
    monkeypatch.setattr(DATASETS, "_builders", builders)
    seen = {}

    def tiny(image_size: int, on_bad_image: str = "skip") -> tuple[TensorImageDataset, None]:
        seen.update(image_size=image_size, on_bad_image=on_bad_image)  # plain data settings
        images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
        return TensorImageDataset(images, labels=[0, 1, 0, 1, 0, 1], class_names=["a", "b"]), None

    DATASETS.register("tiny")(tiny)
    bundle = build_data(DataConfig(dataset="tiny", train_size=4, image_size=12), seed=0)
    assert len(bundle.train) == 4 and bundle.test is None
    assert seen == {"image_size": 12, "on_bad_image": "error"}
    with pytest.raises(ConfigError, match="test_size"):
        build_data(DataConfig(dataset="tiny", test_size=2), seed=0)


def test_subset_larger_than_data_is_config_error() -> None:
    with pytest.raises(ConfigError, match="train_size=5000"):
        build_data(DataConfig(dataset="digits", train_size=5000), seed=0)
