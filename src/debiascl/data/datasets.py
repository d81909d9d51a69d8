"""Datasets that return a stable sample id with every image.

Every dataset here yields a mapping per sample, so torch's default collate gives the batch
described in ``docs/architecture.md``::

    {"index": int64 (b,), "image": uint8 (b, C, H, W), "label": int64 (b,) (-1 = unknown),
     "text": list[str] (if texts), "attrs": int64 (b, n_attr) with -1 = missing (if attributes)}

The sample id lies in ``[0, num_samples)`` and is the key of every per-sample table (SogCLR's u,
GloFND's lambda), so it must be stable across epochs, ranks and resumes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from debiascl.data.info import DatasetInfo
from debiascl.errors import DataError


def _to_tensor(values: object) -> torch.Tensor:
    """A tensor copy of a tensor, array or sequence (never aliasing the caller's memory)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().clone()
    return torch.as_tensor(np.array(values))


def validate_ids(ids: torch.Tensor, num_samples: int) -> None:
    """Raise :class:`DataError` unless ``ids`` (n,) are distinct integers in [0, num_samples)."""
    if ids.dim() != 1:
        raise DataError(f"sample ids must be a 1-d sequence, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise DataError(f"sample ids must be integers, got dtype {ids.dtype}")
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_samples:
        raise DataError(
            f"sample ids must lie in [0, {num_samples}), got values in [{lo}, {hi}]; "
            "renumber the ids or raise num_samples"
        )
    if torch.unique(ids).numel() != ids.numel():
        values, counts = torch.unique(ids, return_counts=True)
        dup = values[counts > 1][:5].tolist()
        raise DataError(f"sample ids must be distinct; repeated ids include {dup}")


class SampleDataset(Dataset):
    """Shared metadata and item layout of every debiascl dataset.

    Attributes:
        ids: int64 (n,) sample id of each row.
        num_samples: size of the id space N (ids lie in [0, N); N may exceed n).
        labels: int64 (n,) class of each row, -1 where unknown.
        texts: caption/report of each row, or None.
        attrs: int64 (n, n_attr) attribute codes, -1 where missing, or None.
        attr_names: names of the attribute columns (empty without attributes).
        attr_vocab: per attribute, the value -> code vocabulary used (empty for integer columns).
        class_names: class names indexed by label, or None.
    """

    ids: torch.Tensor
    num_samples: int
    labels: torch.Tensor
    texts: list[str] | None
    attrs: torch.Tensor | None
    attr_names: list[str]
    attr_vocab: dict[str, dict[str, int]]
    class_names: list[str] | None

    def _init_meta(
        self,
        n: int,
        labels: Sequence[int] | torch.Tensor | np.ndarray | None,
        texts: Sequence[str] | None,
        attrs: torch.Tensor | np.ndarray | None,
        ids: Sequence[int] | torch.Tensor | np.ndarray | None,
        num_samples: int | None,
        attr_names: Sequence[str] | None = None,
        attr_vocab: dict[str, dict[str, int]] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if ids is None:
            self.ids = torch.arange(n, dtype=torch.int64)
        else:
            self.ids = _to_tensor(ids).reshape(-1)
            if self.ids.numel() != n:
                raise DataError(f"got {self.ids.numel()} sample ids for {n} samples")
        validate_ids(self.ids, 2**62)  # distinct, integer, non-negative
        self.ids = self.ids.to(torch.int64)
        default_n = int(self.ids.max()) + 1 if n else 0
        self.num_samples = default_n if num_samples is None else int(num_samples)
        validate_ids(self.ids, self.num_samples)

        if labels is None:
            self.labels = torch.full((n,), -1, dtype=torch.int64)
        else:
            lab = _to_tensor(labels).reshape(-1)
            if lab.numel() != n:
                raise DataError(f"got {lab.numel()} labels for {n} samples")
            if lab.is_floating_point():
                raise DataError("labels must be integers (use -1 for unknown)")
            self.labels = lab.to(torch.int64)
            if n and int(self.labels.min()) < -1:
                raise DataError("labels must be >= 0, or -1 for unknown")
        if class_names is not None and n and int(self.labels.max()) >= len(class_names):
            raise DataError(
                f"label {int(self.labels.max())} has no class name ({len(class_names)} given)"
            )

        if texts is not None:
            texts = [str(t) for t in texts]
            if len(texts) != n:
                raise DataError(f"got {len(texts)} texts for {n} samples")
        self.texts = texts

        if attrs is not None:
            a = _to_tensor(attrs)
            if a.dim() == 1:
                a = a.unsqueeze(1)
            if a.dim() != 2 or a.shape[0] != n:
                raise DataError(f"attrs must have shape ({n}, n_attr), got {tuple(a.shape)}")
            if a.is_floating_point():
                raise DataError("attribute codes must be integers (use -1 for missing)")
            a = a.to(torch.int64)
            if a.numel() and int(a.min()) < -1:
                raise DataError("attribute codes must be >= 0, or -1 for missing")
            self.attrs = a
            names = (
                list(attr_names)
                if attr_names is not None
                else [f"attr{i}" for i in range(a.shape[1])]
            )
            if len(names) != a.shape[1]:
                raise DataError(f"got {len(names)} attribute names for {a.shape[1]} attributes")
            self.attr_names = names
        else:
            self.attrs = None
            self.attr_names = []
        self.attr_vocab = dict(attr_vocab or {})
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return int(self.ids.numel())

    def _load_image(self, row: int) -> torch.Tensor | None:
        """uint8 (C, H, W) image of row ``row``; None if it is unreadable and being skipped."""
        raise NotImplementedError

    def __getitem__(self, row: int) -> dict[str, Any] | None:
        image = self._load_image(row)
        if image is None:
            return None
        item: dict[str, Any] = {
            "index": int(self.ids[row]),
            "image": image,
            "label": int(self.labels[row]),
        }
        if self.texts is not None:
            item["text"] = self.texts[row]
        if self.attrs is not None:
            item["attrs"] = self.attrs[row]
        return item

    # ---------------------------------------------------------------- derived datasets
    def _select_storage(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` of the image storage (subclasses)."""
        raise NotImplementedError

    def select(self, rows: Sequence[int] | np.ndarray) -> SampleDataset:
        """A copy holding only ``rows`` (in that order), with ids re-indexed to 0..len(rows)-1."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise DataError(f"rows must lie in [0, {len(self)})")
        if np.unique(rows).size != rows.size:
            raise DataError("rows to select must be distinct")
        out = copy.copy(self)
        out._select_storage(rows)
        idx = torch.from_numpy(rows)
        out.ids = torch.arange(rows.size, dtype=torch.int64)
        out.num_samples = int(rows.size)
        out.labels = self.labels[idx].clone()
        out.texts = [self.texts[r] for r in rows.tolist()] if self.texts is not None else None
        out.attrs = self.attrs[idx].clone() if self.attrs is not None else None
        return out

    def with_texts(self, texts: Sequence[str] | None) -> SampleDataset:
        """A copy whose rows carry ``texts`` (one per row), or no texts for None."""
        if texts is not None and len(texts) != len(self):
            raise DataError(f"got {len(texts)} texts for {len(self)} samples")
        out = copy.copy(self)
        out.texts = [str(t) for t in texts] if texts is not None else None
        return out

    def info(self) -> DatasetInfo:
        """:class:`DatasetInfo` indexed by sample id (ids absent from this dataset get "" / -1)."""
        n = self.num_samples
        labels = None
        if bool((self.labels >= 0).any()):
            labels = torch.full((n,), -1, dtype=torch.int64)
            labels[self.ids] = self.labels
        texts = None
        if self.texts is not None:
            by_id = [""] * n
            for i, t in zip(self.ids.tolist(), self.texts, strict=True):
                by_id[i] = t
            texts = by_id
        return DatasetInfo(num_samples=n, texts=texts, labels=labels, class_names=self.class_names)


class TensorImageDataset(SampleDataset):
    """Images held in memory as one uint8 tensor.

    Args:
        images: uint8 (N, C, H, W).
        labels: (N,) int class per sample, -1 for unknown; None if unlabelled.
        texts: N captions, or None.
        attrs: (N, n_attr) int attribute codes with -1 for missing, or None.
        ids: (N,) distinct sample ids in [0, num_samples) (default 0..N-1).
        num_samples: id-space size (default max id + 1).
        attr_names, attr_vocab, class_names: metadata kept for evaluation and fairness.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: Sequence[int] | torch.Tensor | np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        attrs: torch.Tensor | np.ndarray | None = None,
        ids: Sequence[int] | torch.Tensor | np.ndarray | None = None,
        num_samples: int | None = None,
        attr_names: Sequence[str] | None = None,
        attr_vocab: dict[str, dict[str, int]] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise DataError(f"images must be a uint8 tensor (N, C, H, W), got {shape}")
        if images.dtype != torch.uint8:
            raise DataError(f"images must have dtype uint8 (0..255), got {images.dtype}")
        self.images = images
        self._init_meta(
            images.shape[0],
            labels,
            texts,
            attrs,
            ids,
            num_samples,
            attr_names,
            attr_vocab,
            class_names,
        )

    def _load_image(self, row: int) -> torch.Tensor:
        return self.images[row]

    def _select_storage(self, rows: np.ndarray) -> None:
        self.images = self.images[torch.from_numpy(rows)]
