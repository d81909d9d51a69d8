"""Captions made from class names, for image-text training on labelled image data.

Each sample's template is chosen by a hash of (seed, sample id), so a caption depends only on the
sample id, its class and the seed: the same on every rank, in every epoch and after a resume.
Repeated captions are genuine false negatives for a contrastive loss, and the class labels give
the ground truth to score false-negative detection.

Styles:
    ``default``: 8 varied templates, uniformly.
    ``single``: one template, so every caption of a class is identical.
    ``skewed``: classes differ in caption diversity: class k of K draws uniformly from the first
        ``round(16 ** (k / (K-1)))`` of 16 templates, so class 0 has one caption shared by all its
        samples (very frequent) and the last class has 16 (each rare). This makes the
        per-sample false-negative rate vary, which sample-specific debiasing (SSD, MLHC 2023)
        is meant to exploit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from debiascl.errors import ConfigError, DataError

CaptionStyle = Literal["default", "single", "skewed"]

# "{}" receives the class name with its article ("a sneaker", "an ankle boot").
_DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a black-and-white picture of {}.",
    "a grayscale image of {}.",
    "a low-resolution photo of {}.",
    "a small picture of {}.",
    "a close-up photo of {}.",
    "this is {}.",
    "an image showing {}.",
)
_EXTRA_TEMPLATES: tuple[str, ...] = (
    "a picture of {}.",
    "a blurry photo of {}.",
    "a centered photo of {}.",
    "a cropped photo of {}.",
    "a catalogue image of {}.",
    "a scanned picture of {}.",
    "a tiny image of {}.",
    "a dark photo of {}.",
)
_SKEWED_TEMPLATES = _DEFAULT_TEMPLATES + _EXTRA_TEMPLATES


def with_article(name: str) -> str:
    """``"sneaker"`` -> ``"a sneaker"``, ``"ankle boot"`` -> ``"an ankle boot"``."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def templates(style: CaptionStyle = "default") -> list[str]:
    """The template pool of a caption style (``"{}"`` marks the class name with its article)."""
    if style == "default":
        return list(_DEFAULT_TEMPLATES)
    if style == "single":
        return [_DEFAULT_TEMPLATES[0]]
    if style == "skewed":
        return list(_SKEWED_TEMPLATES)
    raise ConfigError(f"unknown caption style {style!r}; choose default, single or skewed")


def prompt_templates() -> list[str]:
    """Templates for zero-shot prompt ensembles: the training templates of the default style.

    Fill one with :func:`fill_template`; average the normalised text embeddings over templates.
    """
    return list(_DEFAULT_TEMPLATES)


def fill_template(template: str, class_name: str) -> str:
    """Put ``class_name`` with its article into ``template``."""
    return template.format(with_article(class_name))


def class_prompts(
    class_names: Sequence[str], prompts: Sequence[str] | None = None
) -> list[list[str]]:
    """Per class, the list of prompts (default :func:`prompt_templates`) filled with its name."""
    pool = list(prompts) if prompts is not None else prompt_templates()
    return [[fill_template(t, name) for t in pool] for name in class_names]


def templates_per_class(num_classes: int, style: CaptionStyle) -> np.ndarray:
    """How many templates of the pool each class draws from (int64 (K,))."""
    pool = len(templates(style))
    if style != "skewed":
        return np.full(num_classes, pool, dtype=np.int64)
    if num_classes == 1:
        return np.array([pool], dtype=np.int64)
    k = np.arange(num_classes) / (num_classes - 1)
    return np.clip(np.rint(float(pool) ** k), 1, pool).astype(np.int64)


def _mix(seed: int, ids: np.ndarray) -> np.ndarray:
    """SplitMix64 of (seed, id): a well-spread uint64 per id, identical on every platform."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(
            0x9E3779B97F4A7C15
        )
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def template_indices(
    labels: Sequence[int] | np.ndarray,
    ids: Sequence[int] | np.ndarray,
    num_classes: int,
    style: CaptionStyle = "default",
    seed: int = 0,
) -> np.ndarray:
    """Index into :func:`templates` of each sample's template (int64 (n,))."""
    labels = np.asarray(labels, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if labels.shape != ids.shape or labels.ndim != 1:
        raise DataError(f"labels {labels.shape} and ids {ids.shape} must be equal-length 1-d")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"captions need a class label in [0, {num_classes}) for every sample; got labels in "
            f"[{labels.min()}, {labels.max()}] (unlabelled samples need a text column instead)"
        )
    if ids.size and ids.min() < 0:
        raise DataError("sample ids must be non-negative")
    counts = templates_per_class(num_classes, style)
    return (_mix(seed, ids) % counts[labels].astype(np.uint64)).astype(np.int64)


def make_captions(
    class_names: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    ids: Sequence[int] | np.ndarray,
    style: CaptionStyle = "default",
    seed: int = 0,
) -> list[str]:
    """One caption per sample, e.g. ``"a black-and-white picture of an ankle boot."``.

    Args:
        class_names: K names; labels index into them.
        labels: (n,) class of each sample.
        ids: (n,) sample ids; together with ``seed`` they pick the template.
        style: ``default``, ``single`` or ``skewed`` (see the module docstring).
        seed: changes which template each id gets.
    """
    pool = templates(style)
    idx = template_indices(labels, ids, len(class_names), style, seed)
    filled = class_prompts(class_names, pool)
    return [
        filled[c][t]
        for c, t in zip(np.asarray(labels, dtype=np.int64).tolist(), idx.tolist(), strict=True)
    ]
