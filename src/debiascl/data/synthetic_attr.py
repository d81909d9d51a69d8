"""A **synthetic** sensitive-attribute benchmark on Fashion-MNIST (clearly not real demographics).

No chest X-rays with demographics can be installed on the build machines, so fairness methods are
exercised on a synthetic stand-in: each Fashion-MNIST image gets a binary attribute ``a`` rendered
into its pixels, correlated with the class, while the captions never mention it:

* ``style="border"``: a = 1 draws a bright frame (``width`` pixels, value 255) around the image;
* ``style="tint"``: a = 1 lifts the dark background, ``x' = 80 + x * 175 / 255`` (a global
  intensity tint).

Correlation: the classes are split into two halves (``label % 2 == 0`` "even" classes and the
rest); ``P(a = 1 | y even) = correlation`` and ``P(a = 1 | y odd) = 1 - correlation``, so
``P(a = 1) = 1/2`` on balanced data, 0.5 means independence and values near 1 make the attribute a
shortcut for the class. The attribute of sample id i depends only on (seed, split, i), so it is the
same on every rank and in every epoch. Use a smaller ``correlation`` (e.g. 0.5) for the test split
to expose models that lean on the shortcut: their accuracy differs between the attribute groups.

The attribute is named :data:`SYNTHETIC_ATTRIBUTE` (``"synthetic_mark"``) everywhere so results
can never be mistaken for a demographic audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from debiascl.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from debiascl.data.captions import CaptionStyle, make_captions
from debiascl.data.datasets import TensorImageDataset
from debiascl.errors import ConfigError
from debiascl.registry import DATASETS

SYNTHETIC_ATTRIBUTE = "synthetic_mark"
SYNTHETIC_VALUES = ("unmarked", "marked")
Style = Literal["border", "tint"]
_SPLIT_SALT = {"train": 0x5EED, "test": 0x7E57}


@dataclass
class SyntheticAttrData:
    """One split of the synthetic-attribute benchmark.

    Attributes:
        images: uint8 (N, 1, 28, 28) with the attribute rendered in.
        labels: int64 (N,) Fashion-MNIST class.
        attrs: int64 (N,) synthetic attribute (0 unmarked, 1 marked).
        ids: int64 (N,) sample ids (row position in the original split).
        captions: N captions from the class name only (never the attribute).
        class_names, attribute_name, attribute_values: metadata.
        correlation, style: how the split was made.
    """

    images: torch.Tensor
    labels: torch.Tensor
    attrs: torch.Tensor
    ids: torch.Tensor
    captions: list[str]
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES
    attribute_name: str = SYNTHETIC_ATTRIBUTE
    attribute_values: tuple[str, ...] = SYNTHETIC_VALUES
    correlation: float = 0.9
    style: str = "border"
    note: str = field(
        default="SYNTHETIC attribute rendered into Fashion-MNIST; not a demographic attribute"
    )

    def dataset(self) -> TensorImageDataset:
        """The split as a :class:`TensorImageDataset` (texts = captions, one attribute column)."""
        return TensorImageDataset(
            self.images,
            labels=self.labels.numpy(),
            texts=self.captions,
            attrs=self.attrs[:, None].numpy(),
            ids=self.ids.numpy(),
            num_samples=int(self.ids.max()) + 1,
            attr_names=[self.attribute_name],
            attr_vocab={self.attribute_name: {v: i for i, v in enumerate(self.attribute_values)}},
            class_names=list(self.class_names),
        )


def synthetic_attribute(
    labels: np.ndarray,
    ids: np.ndarray,
    correlation: float,
    seed: int,
    split: str = "train",
    id_space: int | None = None,
) -> np.ndarray:
    """(N,) int64 attribute: 1 with probability ``correlation`` for even classes, else 1 - it.

    One uniform draw per id of the whole id space ``[0, id_space)`` (default max id + 1) from a
    generator seeded by (seed, split), so a sample's attribute does not depend on which subset
    of ids is loaded.
    """
    if not 0.0 <= correlation <= 1.0:
        raise ConfigError(f"correlation must be in [0, 1], got {correlation}")
    ids = np.asarray(ids, dtype=np.int64)
    space = int(ids.max()) + 1 if id_space is None else id_space
    u = np.random.default_rng((seed, _SPLIT_SALT[split])).random(space)[ids]
    p = np.where(np.asarray(labels) % 2 == 0, correlation, 1.0 - correlation)
    return (u < p).astype(np.int64)


def render_attribute(
    images: torch.Tensor, attrs: torch.Tensor, style: Style = "border", width: int = 2
) -> torch.Tensor:
    """Images uint8 (N, C, H, W) with the attribute drawn on rows where ``attrs == 1``."""
    out = images.clone()
    marked = attrs.bool()
    if style == "border":
        frame = torch.zeros(images.shape[-2:], dtype=torch.bool)
        frame[:width, :] = frame[-width:, :] = True
        frame[:, :width] = frame[:, -width:] = True
        sel = out[marked]
        sel[..., frame] = 255
        out[marked] = sel
    elif style == "tint":
        x = out[marked].float()
        out[marked] = (80.0 + x * (175.0 / 255.0)).round().clamp(0, 255).to(torch.uint8)
    else:
        raise ConfigError(f"unknown synthetic attribute style {style!r}; use 'border' or 'tint'")
    return out


def load_synthetic_attr(
    split: Literal["train", "test"] = "train",
    correlation: float = 0.9,
    style: Style = "border",
    size: int | None = None,
    seed: int = 0,
    root: str | Path | None = None,
    caption_style: CaptionStyle = "default",
    subset_seed: int = 0,
) -> SyntheticAttrData:
    """Load one split of the synthetic-attribute Fashion-MNIST benchmark.

    Args:
        split: ``"train"`` or ``"test"``.
        correlation: P(a = 1 | even class) = P(a = 0 | odd class), in [0, 1].
        style: ``"border"`` or ``"tint"``.
        size: keep a seeded random subset of this many images (ids keep their original values).
        seed: seed of the attribute draws (and of the captions' templates).
        root: Fashion-MNIST IDX folder (default the Debian location).
        caption_style: template style of :func:`debiascl.data.captions.make_captions`.
        subset_seed: seed of the ``size`` subset.
    """
    images, labels = load_fashion_mnist(split, root)
    n_full = len(labels)
    ids = np.arange(n_full)
    if size is not None:
        if size < 1:
            raise ConfigError(f"size must be >= 1, got {size}")
        ids = np.sort(np.random.default_rng(subset_seed).permutation(len(labels))[:size])
        images, labels = images[torch.from_numpy(ids)], labels[torch.from_numpy(ids)]
    y = labels.numpy()
    attrs = torch.from_numpy(synthetic_attribute(y, ids, correlation, seed, split, n_full))
    return SyntheticAttrData(
        images=render_attribute(images, attrs, style),
        labels=labels,
        attrs=attrs,
        ids=torch.from_numpy(ids),
        captions=make_captions(FASHION_MNIST_CLASSES, y, ids, caption_style, seed),
        correlation=correlation,
        style=style,
    )


# ----------------------------------------------------------------------------- registration
@DATASETS.register("synthetic_attr")
def synthetic_attr(
    root: str | None = None,
    synthetic_correlation: float = 0.9,
    synthetic_test_correlation: float = 0.5,
    synthetic_style: str = "border",
) -> tuple[TensorImageDataset, TensorImageDataset]:
    """``dataset=synthetic_attr``: P(mark | even class) is ``synthetic_correlation`` in the
    training split and ``synthetic_test_correlation`` (default 0.5: attribute independent of the
    class, so group gaps measure the model, not base rates) in the test split; the mark is drawn
    as ``synthetic_style`` (``"border"`` or ``"tint"``). The attribute draw is fixed (seed 0) so
    every run sees the same synthetic data."""
    train = load_synthetic_attr("train", synthetic_correlation, synthetic_style, seed=0, root=root)
    test = load_synthetic_attr(
        "test", synthetic_test_correlation, synthetic_style, seed=0, root=root
    )
    return train.dataset(), test.dataset()
