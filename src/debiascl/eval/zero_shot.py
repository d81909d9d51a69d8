"""Zero-shot classification with prompt ensembles, and one-vs-rest AUC of the class scores.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML
2021, Sec. 3.1.4: embed each class name inside several prompt templates, average the normalised
text embeddings per class and renormalise; an image's class scores are its cosine similarities to
these class embeddings times the logit scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from debiascl.errors import ConfigError, DataError, check
from debiascl.eval._arrays import ArrayLike, as_numpy, float_matrix, label_vector, same_width
from debiascl.eval.ties import class_hit_rate
from debiascl.numerics import unit_rows

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

#: Dataset-neutral prompt ensemble (CLIP style, Radford et al. 2021): no colour, modality or
#: domain words, so it suits colour photos, grey scans and anything in between. Zero-shot
#: evaluation uses it for data that bring their own captions; set ``eval.zero_shot_templates``
#: for prompts worded like your captions (e.g. "a chest X-ray showing {}.").
GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a photo of the {}.",
    "a low-resolution photo of a {}.",
)


@torch.no_grad()
def class_embeddings(
    encode_text: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(C, D) unit-norm class embeddings from a prompt ensemble.

    Args:
        encode_text: list of P strings -> (P, D) text embeddings (normalised here).
        class_names: the C class names, in label order.
        templates: T prompt templates, each containing ``{}`` where the class name goes.

    Returns:
        (C, D) float tensor: per class, the mean of its T normalised prompt embeddings,
        renormalised. One ``encode_text`` call per class.
    """
    check(len(class_names) > 0, "class_names is empty; pass the names in label order", DataError)
    check(len(templates) > 0, "templates is empty; pass at least one prompt template", ConfigError)
    for t in templates:
        check(
            "{}" in t, f"template {t!r} has no '{{}}' placeholder for the class name", ConfigError
        )
    rows = []
    for name in class_names:
        prompts = [t.format(name) for t in templates]
        emb = encode_text(prompts)
        check(
            isinstance(emb, torch.Tensor) and emb.dim() == 2 and emb.shape[0] == len(prompts),
            f"encode_text must return a ({len(prompts)}, D) tensor for {len(prompts)} prompts",
            DataError,
        )
        rows.append(unit_rows(emb, dim=1).mean(dim=0))
    return unit_rows(torch.stack(rows), dim=1)


def zero_shot_scores(
    image_emb: ArrayLike, class_emb: ArrayLike, logit_scale: float = 1.0
) -> torch.Tensor:
    """(N, C) logits ``logit_scale * cos(image_i, class_c)``; both inputs are normalised here."""
    check(logit_scale > 0, f"logit_scale must be > 0, got {logit_scale}", ConfigError)
    img = float_matrix(image_emb, "image_emb")
    cls = float_matrix(class_emb, "class_emb", img.device)
    same_width(img, cls, "image_emb", "class_emb")
    dtype = torch.float64 if torch.float64 in (img.dtype, cls.dtype) else torch.float32
    return logit_scale * unit_rows(img.to(dtype), dim=1) @ unit_rows(cls.to(dtype), dim=1).T


def zero_shot_accuracy(scores: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in [0, 1] of (N, C) class scores against (N,) labels.

    A row whose true class ties with c other classes at the top counts 1 / (c + 1), its
    expected hit under a random order of the tied classes (:mod:`debiascl.eval.ties`).
    """
    s = float_matrix(scores, "scores")
    y = label_vector(labels, "labels", s.shape[0], s.device)
    check(
        int(y.max()) < s.shape[1],
        f"labels reach {int(y.max())} but scores have only {s.shape[1]} classes",
        DataError,
    )
    return float(class_hit_rate(s, y, 1).mean())


def one_vs_rest_auc(
    scores: ArrayLike, labels: ArrayLike, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-class one-vs-rest ROC AUC and their macro average.

    Class c's AUC ranks the column ``scores[:, c]`` against ``labels == c``. AUC is rank based, so
    logits and probabilities of one column give the same value only if the transformation is
    monotone per column: pass softmax probabilities to match scikit-learn's
    ``roc_auc_score(labels, probs, multi_class="ovr", average="macro")``.

    A class without positives or without negatives among ``labels`` has no AUC: it is left out of
    the macro average with a warning and listed under ``"skipped"``.

    Returns:
        ``{"per_class": {name: auc}, "macro": mean over defined classes (nan if none),
        "skipped": [names]}``; names default to the class indices as strings.
    """
    s = as_numpy(scores, "scores").astype(np.float64)
    y = as_numpy(labels, "labels")
    check(s.ndim == 2, f"scores must be (N, C), got shape {s.shape}", DataError)
    check(
        y.ndim == 1 and y.shape[0] == s.shape[0],
        f"labels must have shape ({s.shape[0]},), got {y.shape}",
        DataError,
    )
    check(bool(np.isfinite(s).all()), "scores contain NaN or inf", DataError)
    n_classes = s.shape[1]
    check(
        y.size > 0 and np.issubdtype(y.dtype, np.integer) and y.min() >= 0 and y.max() < n_classes,
        f"labels must be integers in [0, {n_classes}) to match the score columns",
        DataError,
    )
    names = [str(c) for c in range(n_classes)] if class_names is None else list(class_names)
    check(
        len(names) == n_classes,
        f"got {len(names)} class names for {n_classes} score columns",
        DataError,
    )
    per_class: dict[str, float] = {}
    skipped: list[str] = []
    for c, name in enumerate(names):
        positive = y == c
        if positive.all() or not positive.any():
            skipped.append(name)
            continue
        per_class[name] = float(roc_auc_score(positive, s[:, c]))
    if skipped:
        warnings.warn(
            f"no AUC for classes {skipped}: they have no positive or no negative samples here; "
            "the macro AUC averages the other classes",
            stacklevel=2,
        )
    macro = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"per_class": per_class, "macro": macro, "skipped": skipped}


def zero_shot_eval(
    image_emb: ArrayLike,
    labels: ArrayLike,
    class_emb: ArrayLike,
    logit_scale: float = 1.0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy and one-vs-rest AUC (on softmax probabilities) of zero-shot classification.

    Returns:
        ``{"accuracy", "auc_macro", "auc_per_class": {name: auc}}``.
    """
    scores = zero_shot_scores(image_emb, class_emb, logit_scale)
    auc = one_vs_rest_auc(scores.softmax(dim=1), labels, class_names)
    return {
        "accuracy": zero_shot_accuracy(scores, labels),
        "auc_macro": auc["macro"],
        "auc_per_class": auc["per_class"],
    }
