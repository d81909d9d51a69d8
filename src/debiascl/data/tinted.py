"""A **synthetic** colour x garment image-text set: Fashion-MNIST garments tinted in one of three
colours, each class named by both ("red coat"), ``data.dataset: tinted_fashion_mnist``.

Why it exists: it is the built-in stand-in for a report archive where many images share the exact
same report among many near-miss reports (chest X-ray "No acute findings" beside "No acute
cardiopulmonary process"). With ``data.caption_templates: single`` every caption of a class is
identical, so the identical captions are the false negatives, while the colour is easy to see and
the garment is hard: most of an anchor's informative negatives share its colour and differ in
garment, and a detector that judges by the encoder's similarity removes exactly those. The false-
negative regime study (``docs/experiments/fn_regimes.md``, regime ``it_tint``) uses it.

Each image of Fashion-MNIST gets one colour, drawn once from a fixed seed per split (so the colour
of sample id i is the same in every run, rank and epoch); the grey image is multiplied by the
colour's RGB weights (:data:`COLOURS`), giving uint8 (N, 3, 28, 28). Labels are
``colour * 10 + garment`` (30 classes), named ``"<colour> <garment>"``; pick a subset with
``data.classes`` (e.g. the 9 classes of pullover, coat and shirt in three colours).
"""

from __future__ import annotations

import numpy as np
import torch

from debiascl.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from debiascl.data.datasets import TensorImageDataset
from debiascl.registry import DATASETS

#: colour name -> RGB weights applied to the grey image (each channel = grey * weight)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.3, 0.3),
    "green": (0.3, 1.0, 0.3),
    "blue": (0.35, 0.35, 1.0),
}
_SPLIT_SEED = {"train": 0xC0105, "test": 0xC0106}


def tinted_class_names() -> list[str]:
    """The 30 class names in label order: ``colour * 10 + garment`` -> "<colour> <garment>"."""
    garments = [g.replace("_", " ") for g in FASHION_MNIST_CLASSES]
    return [f"{c} {g}" for c in COLOURS for g in garments]


def colour_indices(split: str, n: int) -> np.ndarray:
    """int64 (n,) colour index of each sample id of ``split``, from the split's fixed seed."""
    return np.random.default_rng(_SPLIT_SEED[split]).integers(0, len(COLOURS), size=n)


def tint(images: torch.Tensor, colours: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, H, W): grey uint8 (N, 1, H, W) images multiplied by their colour's weights.

    Args:
        images: uint8 (N, 1, H, W) grey images.
        colours: int (N,) index into :data:`COLOURS` per image.
    """
    weights = torch.tensor(list(COLOURS.values()), dtype=torch.float64)[torch.as_tensor(colours)]
    rgb = images.double() * weights[:, :, None, None]
    return rgb.round().clamp_(0, 255).to(torch.uint8)


@DATASETS.register("tinted_fashion_mnist")
def tinted_fashion_mnist(
    root: str | None = None,
) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The train and test splits, 30 colour x garment classes (SYNTHETIC colours).

    Args:
        root: folder of the Fashion-MNIST IDX files (default: Debian's location).

    Raises:
        DataError: the Fashion-MNIST files are missing (the message says how to install them).
    """
    names = tinted_class_names()
    out = []
    for split in ("train", "test"):
        images, garments = load_fashion_mnist(split, root)
        colours = colour_indices(split, len(garments))
        labels = torch.as_tensor(colours, dtype=torch.int64) * len(FASHION_MNIST_CLASSES) + garments
        out.append(TensorImageDataset(tint(images, colours), labels, class_names=names))
    return out[0], out[1]
