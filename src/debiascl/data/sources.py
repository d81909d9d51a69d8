"""The built-in dataset sources of :data:`debiascl.registry.DATASETS` (``data.dataset``).

Each factory takes plain keyword arguments (the ``data`` settings its signature names, passed by
:func:`debiascl.compose.build_data`) and returns ``(train, test | None)``. ``synthetic_attr``
registers itself in :mod:`debiascl.data.synthetic_attr`.
"""

from __future__ import annotations

from pathlib import Path

from debiascl.data.builtin import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    load_digits_split,
    load_fashion_mnist,
)
from debiascl.data.datasets import SampleDataset, TensorImageDataset
from debiascl.data.image_folder import ImageFolderDataset
from debiascl.data.manifest import ManifestDataset
from debiascl.data.shard_source import (
    ShardSource,
    check_streamable,
    load_shard_split,
    open_shards,
)
from debiascl.errors import ConfigError, DataError
from debiascl.registry import DATASETS


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str | None = None) -> tuple[SampleDataset, SampleDataset]:
    """Fashion-MNIST's train and test splits (IDX files under ``root``, default the Debian
    location)."""
    names = list(FASHION_MNIST_CLASSES)
    out = []
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split, root)
        out.append(TensorImageDataset(images, labels, class_names=names))
    return out[0], out[1]


@DATASETS.register("digits")
def digits() -> tuple[SampleDataset, SampleDataset]:
    """scikit-learn's 8x8 digits, split into train and test."""
    names = list(DIGITS_CLASSES)
    out = []
    for split in ("train", "test"):
        images, labels = load_digits_split(split)
        out.append(TensorImageDataset(images, labels, class_names=names))
    return out[0], out[1]


@DATASETS.register("manifest")
def manifest(
    manifest: str | None,
    mode: str = "image_image",
    test_manifest: str | None = None,
    image_column: str = "path",
    text_column: str | None = "text",
    label_column: str | None = "label",
    attribute_columns: list[str] | None = None,
    id_column: str | None = None,
    channels: int = 1,
    image_size: int = 28,
    on_bad_image: str = "error",
    high_bit_scaling: str = "dtype",
) -> tuple[SampleDataset, SampleDataset | None]:
    """A CSV/Parquet manifest (and an optional test manifest sharing its vocabularies)."""
    if manifest is None:
        raise ConfigError("dataset=manifest needs data.manifest=<path to .csv or .parquet>")
    common = {
        "image_column": image_column,
        "text_column": text_column if mode == "image_text" else None,
        "label_column": label_column,
        "attribute_columns": list(attribute_columns or []),
        "id_column": id_column,
        "channels": channels,
        "image_size": image_size,
        "on_bad_image": on_bad_image,
        "high_bit_scaling": high_bit_scaling,
    }
    train = ManifestDataset(manifest, **common)
    test = None
    if test_manifest is not None:
        test = ManifestDataset(
            test_manifest,
            attr_vocab=train.attr_vocab,
            label_vocab=train.label_vocab,
            **common,
        )
    return train, test


@DATASETS.register("shards")
def shards(
    shards: str | None,
    test_shards: str | None = None,
    test_manifest: str | None = None,
    mode: str = "image_image",
    channels: int = 1,
    image_size: int = 28,
    train_size: int | None = None,
    test_size: int | None = None,
    validation_size: int | None = None,
    classes: list[str | int] | None = None,
    subsample_classes: list[int] | None = None,
    image_column: str = "path",
    text_column: str | None = "text",
    label_column: str | None = "label",
) -> tuple[ShardSource, SampleDataset | None]:
    """Webdataset tar shards streamed for training (``data.shards``: a folder indexed by
    ``python -m debiascl.data.shards index DIR`` or a brace pattern of its shards); the test
    split, if any, is ``data.test_shards`` (read into memory) or ``data.test_manifest``."""
    if shards is None:
        raise ConfigError(
            "dataset=shards needs data.shards=<folder of .tar shards with shards.json, or a "
            "brace pattern like /data/{00000..00099}.tar>"
        )
    if test_shards is not None and test_manifest is not None:
        raise ConfigError("set data.test_shards or data.test_manifest, not both")
    check_streamable(
        {
            "data.train_size": train_size,
            "data.test_size": test_size,
            "data.validation_size": validation_size,
            "data.classes": list(classes or []),
            "data.subsample_classes": list(subsample_classes or []),
        }
    )
    train = ShardSource(open_shards(shards), channels=channels, image_size=image_size)
    if mode == "image_text" and train.corpus is None:  # a text tower's vocabulary comes from it
        raise DataError(
            f"the index of {shards} has no caption vocabulary (written by an older version); "
            f"rebuild it: python -m debiascl.data.shards index {train.index.root}"
        )
    test: SampleDataset | None = None
    if test_shards is not None:
        test = load_shard_split(test_shards, channels=channels, image_size=image_size)
    elif test_manifest is not None:
        test = ManifestDataset(
            test_manifest,
            image_column=image_column,
            text_column=text_column if mode == "image_text" else None,
            label_column=label_column,
            channels=channels,
            image_size=image_size,
        )
    if mode == "image_text" and test is not None and test.texts is None:
        raise ConfigError(
            "data.mode=image_text evaluates retrieval on captions: every test sample needs one "
            "(a .txt file per sample in data.test_shards, or a text column in data.test_manifest)"
        )
    return train, test


@DATASETS.register("image_folder")
def image_folder(
    root: str | None,
    channels: int = 1,
    image_size: int = 28,
    on_bad_image: str = "error",
    high_bit_scaling: str = "dtype",
) -> tuple[SampleDataset, SampleDataset | None]:
    """A folder of class folders (or ``train/`` and ``test/`` folders of them)."""
    if root is None:
        raise ConfigError("dataset=image_folder needs data.root=<folder of class folders>")
    path = Path(root)
    common = {
        "channels": channels,
        "image_size": image_size,
        "on_bad_image": on_bad_image,
        "high_bit_scaling": high_bit_scaling,
    }
    if (path / "train").is_dir() and (path / "test").is_dir():
        train = ImageFolderDataset(path / "train", **common)
        test = ImageFolderDataset(path / "test", class_names=train.class_names, **common)
        return train, test
    return ImageFolderDataset(path, **common), None
