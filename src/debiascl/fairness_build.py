"""Composition layer for fairness: reads the run config and builds the fairness terms.

The only place that turns ``cfg.fairness`` (and the data) into plain arguments for
:class:`~debiascl.fairness.terms.FairnessTerms` and the registered terms
(:data:`~debiascl.fairness.terms.FAIRNESS_TERMS`); the terms themselves never see a config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from debiascl.config.schema import RunConfig
from debiascl.errors import ConfigError
from debiascl.fairness.adversary import AttributeSpec
from debiascl.fairness.penalties import label_balance_table
from debiascl.fairness.terms import FAIRNESS_TERMS, FairnessTerms, TermSetup
from debiascl.numerics import unit_rows


def build_fairness_terms(
    cfg: RunConfig, model: nn.Module, device: torch.device | str, data: Any | None = None
) -> FairnessTerms | None:
    """The :class:`FairnessTerms` of ``cfg.fairness.terms`` (None when the list is empty).

    ``data`` (a :class:`debiascl.data.build.DataBundle`) gives the attribute names, their
    vocabularies, the class count and the in-memory training set (refits); without it the columns
    are ``cfg.data.attribute_columns`` and every attribute is taken as binary.

    Raises:
        ConfigError: no attributes, attributes not in the data, ``on`` incompatible with the model
            or mode, or a term's own configuration error.
    """
    fc = cfg.fairness
    if not fc.terms:
        return None
    if not fc.attributes:
        raise ConfigError("fairness.terms is set but fairness.attributes is empty; name them")
    if fc.on == "feature" and not isinstance(getattr(model, "encoder", None), nn.Module):
        raise ConfigError(
            "fairness.on=feature needs a model with an image backbone at model.encoder; use "
            "fairness.on=image or text"
        )
    if fc.on == "text" and cfg.data.mode != "image_text":
        raise ConfigError("fairness.on=text needs data.mode=image_text")
    names = list(getattr(data, "attr_names", None) or cfg.data.attribute_columns)
    classes = _attribute_classes(names, data)
    absent = [a for a in fc.attributes if a not in classes]
    if absent:
        raise ConfigError(
            f"fairness.attributes {absent} are not attribute columns of the data "
            f"(have {sorted(classes)}); fix data.attribute_columns"
        )
    columns = [names.index(a) for a in fc.attributes]
    in_dim = cfg.model.embed_dim
    if fc.on == "feature":
        in_dim = int(getattr(model.encoder, "feature_dim", 0)) or _probe_feature_dim(model, cfg)
    table = None
    if fc.balance == "label":
        table = _balance_tables(data, columns, [classes[a] for a in fc.attributes])
    stack_holder: list[FairnessTerms] = []  # the refit closure reads the stack's weights
    train = getattr(data, "train", None)
    training_set = None
    if fc.on != "text" and getattr(train, "images", None) is not None:

        def training_set() -> tuple[torch.Tensor, torch.Tensor, Any]:
            dev = next(model.parameters()).device
            z = _embed_dataset(model, train.images, cfg.data, fc.on == "feature", dev)
            if fc.normalize and fc.on != "feature":
                z = unit_rows(z)
            attrs = torch.as_tensor(train.attrs).long()
            attrs = (attrs[:, None] if attrs.ndim == 1 else attrs)[:, columns]
            return z, attrs, getattr(train, "labels", None)

    setup = TermSetup(
        attributes=[AttributeSpec(a, int(classes[a])) for a in fc.attributes],
        input_dim=int(in_dim),
        num_classes=_num_classes(data),
        training_set=training_set,
        sample_weights=lambda labels, attrs: stack_holder[0].sample_weights(labels, attrs),
    )
    terms = [FAIRNESS_TERMS.get(s.name)(s, setup) for s in fc.terms]
    stack = FairnessTerms(
        terms,
        columns,
        on=fc.on,
        mode=cfg.data.mode,
        normalize=fc.normalize,
        view=fc.view,
        feature_source=model.encoder if fc.on == "feature" else None,
        balance_table=table,
    )
    stack_holder.append(stack)
    return stack.to(device)


def _attribute_classes(names: Sequence[str], data: Any) -> dict[str, int]:
    classes: dict[str, int] = {}
    for j, name in enumerate(names):
        vocab = (getattr(data, "attr_vocab", None) or {}).get(name)
        if vocab:
            classes[name] = len(vocab)
        elif data is not None and getattr(data.train, "attrs", None) is not None:
            classes[name] = max(2, int(data.train.attrs[:, j].max()) + 1)
        else:
            classes[name] = 2
    return classes


def _num_classes(data: Any) -> int:
    """Number of classes of the training data's labels (0 without labels)."""
    labels = getattr(getattr(data, "train", None), "labels", None)
    if labels is None:
        return 0
    labels = torch.as_tensor(labels)
    return int(labels.max()) + 1 if bool((labels >= 0).any()) else 0


def _balance_tables(data: Any, columns: Sequence[int], values: Sequence[int]) -> torch.Tensor:
    """(C, A, K_max) :func:`label_balance_table` of every attribute, from the training data."""
    train = getattr(data, "train", None)
    labels = getattr(train, "labels", None)
    attrs = getattr(train, "attrs", None)
    if labels is None or attrs is None or not bool((torch.as_tensor(labels) >= 0).any()):
        raise ConfigError(
            "fairness.balance=label needs class labels and attributes in the training data; "
            "use labelled data or fairness.balance=none"
        )
    labels = torch.as_tensor(labels).long()
    attrs = torch.as_tensor(attrs).long()
    if attrs.ndim == 1:
        attrs = attrs[:, None]
    n_cls = int(labels.max()) + 1
    out = torch.ones(n_cls, len(columns), max(values))
    for j, (col, k) in enumerate(zip(columns, values, strict=True)):
        out[:, j, :k] = label_balance_table(labels, attrs[:, col], n_cls, k)
    return out


@torch.no_grad()
def _embed_dataset(
    model: nn.Module, images: Any, data_cfg: Any, feature: bool, device: torch.device
) -> torch.Tensor:
    """(n, D) clean image embeddings (or backbone features) of uint8 images, eval mode."""
    from debiascl.data.augment import EvalTransform

    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[:, None]
    tf = EvalTransform(data_cfg.image_size, data_cfg.channels).to(device)
    was = model.training
    model.eval()
    try:
        out = []
        for i in range(0, images.shape[0], 512):
            f = model.encoder(tf(images[i : i + 512].to(device)))
            out.append((f if feature else model.head(f)).float())
    finally:
        model.train(was)
    return torch.cat(out)


@torch.no_grad()
def _probe_feature_dim(model: nn.Module, cfg: RunConfig) -> int:
    """Backbone feature width from one dummy forward (encoders without ``feature_dim``)."""
    p = next(model.encoder.parameters())
    size = cfg.data.image_size
    was = model.encoder.training
    model.encoder.eval()
    out = model.encoder(torch.zeros(1, cfg.data.channels, size, size, device=p.device))
    model.encoder.train(was)
    return int(out.shape[-1])
