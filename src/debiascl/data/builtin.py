"""Built-in data that needs no network: Fashion-MNIST (Debian IDX files) and scikit-learn digits.

Fashion-MNIST (Xiao et al., 2017) comes from Debian's ``dataset-fashion-mnist`` package as gzipped
IDX files (images: 16-byte header then N*28*28 uint8; labels: 8-byte header then N uint8).
scikit-learn's ``load_digits`` ships 1,797 8x8 images with values 0..16 inside the wheel.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from debiascl.errors import ConfigError, DataError

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: Class names in label order, worded so that they read naturally inside a caption.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGITS_CLASSES: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)

Split = Literal["train", "test"]
_FMNIST_PREFIX = {"train": "train", "test": "t10k"}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Decode one gzipped IDX file of unsigned bytes into an array shaped by its header."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; reinstall the dataset")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path} has {len(raw)} bytes, expected {expected}; the file is truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    split: Split = "train", root: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one Fashion-MNIST split from the IDX files.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
            (default :data:`DEFAULT_FASHION_MNIST_ROOT`).

    Returns:
        images uint8 (N, 1, 28, 28) and labels int64 (N,) in [0, 10).
    """
    _check_split(split)
    folder = Path(root if root is not None else DEFAULT_FASHION_MNIST_ROOT)
    prefix = _FMNIST_PREFIX[split]
    img_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [p.name for p in (img_path, lbl_path) if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST files {', '.join(missing)} not found in {folder}; install Debian's "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set data.root"
        )
    images = _read_idx(img_path, _IDX_IMAGES_MAGIC)
    labels = _read_idx(lbl_path, _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path.name} has {images.shape[0]} images but {lbl_path.name} has "
            f"{labels.shape[0]} labels; reinstall the dataset"
        )
    return (
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def load_digits_split(
    split: Split = "train", test_fraction: float = 0.25, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits with a fixed, seeded, class-stratified train/test split.

    Pixel values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``).

    Returns:
        images uint8 (N, 1, 8, 8) and labels int64 (N,) in [0, 10); with the defaults N is 1,347
        for ``train`` and 450 for ``test``.
    """
    _check_split(split)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rows = np.arange(len(pixels))
    train_rows, test_rows = train_test_split(
        rows, test_size=test_fraction, random_state=split_seed, stratify=digits.target
    )
    chosen = np.sort(train_rows if split == "train" else test_rows)
    return (
        torch.from_numpy(pixels[chosen]).unsqueeze(1),
        torch.from_numpy(digits.target[chosen].astype(np.int64)),
    )
