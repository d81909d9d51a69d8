"""Class subsets of a labelled dataset (``data.classes``): build regimes from built-in data.

Keeping k of a dataset's classes sets the false-negative base rate of contrastive learning (about
1 / k of the negatives share the anchor's class for balanced data). :func:`select_classes` keeps
the rows of the listed classes in both splits, renumbers their labels 0..k-1 in the listed order
and keeps only their names, so zero-shot prompts, linear probes and diagnostics see the k classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from debiascl.data.datasets import SampleDataset
from debiascl.errors import ConfigError


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def class_indices(classes: Sequence[str | int], class_names: Sequence[str] | None) -> list[int]:
    """Labels of ``classes``, given by name (case, ``_`` and spaces ignored) or label index.

    Raises:
        ConfigError: an unknown class, a repeated class, or names for a dataset without names.
    """
    names = [_norm(n) for n in class_names] if class_names is not None else None
    out: list[int] = []
    for c in classes:
        if isinstance(c, int) and not isinstance(c, bool):
            idx = c
            known = names is None or 0 <= c < len(names)
        elif names is not None and _norm(str(c)) in names:
            idx, known = names.index(_norm(str(c))), True
        else:
            idx, known = -1, False
        if not known or idx < 0:
            choices = ", ".join(class_names) if class_names is not None else "label indices"
            raise ConfigError(f"data.classes: unknown class {c!r}; choose from: {choices}")
        if idx in out:
            raise ConfigError(f"data.classes lists class {c!r} twice; list each class once")
        out.append(idx)
    return out


def select_classes(ds: SampleDataset, classes: Sequence[str | int], split: str) -> SampleDataset:
    """The rows of ``ds`` whose label is in ``classes``, relabelled 0..k-1 in the listed order.

    Sample ids are re-indexed to 0..n-1 (as every subset is). ``split`` names the split in errors.

    Raises:
        ConfigError: an unknown class (one line, listing the known ones), or a listed class
            without any row in this split.
    """
    wanted = class_indices(classes, ds.class_names)
    labels = ds.labels.numpy()
    rows = np.flatnonzero(np.isin(labels, wanted))
    empty = [c for c, i in zip(classes, wanted, strict=True) if not (labels == i).any()]
    if empty:
        raise ConfigError(
            f"data.classes: the {split} split has no sample of class {empty[0]!r}; remove it"
        )
    out = ds.select(rows)
    remap = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    remap[wanted] = np.arange(len(wanted))
    out.labels = out.labels.new_tensor(remap[labels[rows]])
    if ds.class_names is not None:
        out.class_names = [ds.class_names[i] for i in wanted]
    return out
