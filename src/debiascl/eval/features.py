"""Frozen-feature extraction: run an encoder over a loader once and keep everything on the CPU.

Every evaluation in :mod:`debiascl.eval` works on the :class:`FeatureSet` this returns, so the
(possibly slow) encoder runs once per split however many protocols follow.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from debiascl.data.augment import EvalTransform
from debiascl.data.build import DataBundle, make_loader
from debiascl.errors import DataError, check

Batch = Mapping[str, Any]
#: rows per forward pass when a run's splits are encoded
EVAL_BATCH = 512


@dataclass
class FeatureSet:
    """Features of one split, row-aligned.

    Attributes:
        features: (N, D) float32 on the CPU.
        labels: (N,) int64 class labels, or None when the batches carry no ``"label"``.
        ids: (N,) int64 sample ids (the batches' ``"index"``).
        texts: N captions/reports when the batches carry ``"text"`` as strings, else None.
        attrs: sensitive attributes when the batches carry ``"attrs"``: an (N,) or (N, A) tensor,
            or a dict name -> (N,) tensor, mirroring what the loader yields; else None.
    """

    features: torch.Tensor
    labels: torch.Tensor | None
    ids: torch.Tensor
    texts: list[str] | None = None
    attrs: torch.Tensor | dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def select(self, rows: torch.Tensor) -> FeatureSet:
        """The subset at ``rows`` ((n,) int64 positions or (N,) bool mask)."""
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        attrs: Any = self.attrs
        if isinstance(attrs, dict):
            attrs = {k: v[rows] for k, v in attrs.items()}
        elif attrs is not None:
            attrs = attrs[rows]
        return FeatureSet(
            features=self.features[rows],
            labels=None if self.labels is None else self.labels[rows],
            ids=self.ids[rows],
            texts=None if self.texts is None else [self.texts[int(i)] for i in rows],
            attrs=attrs,
        )

    def unique_by_id(self) -> FeatureSet:
        """Rows sorted by sample id, keeping the first row of each id.

        A ``DistributedSampler`` pads the last shard with repeated samples; after gathering the
        ranks' feature sets, call this so every sample counts once.
        """
        order = torch.argsort(self.ids, stable=True)
        sorted_ids = self.ids[order]
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        return self.select(order[first])


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _num_samples(loader: Iterable) -> int | None:
    """Samples the loader will yield, when it can tell (only used for the progress bar)."""
    sampler = getattr(loader, "sampler", None)
    for source in (sampler, getattr(loader, "dataset", None)):
        try:
            return len(source)  # type: ignore[arg-type]
        except TypeError:
            continue
    return None


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _as_attr_tensor(value: Any, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"batch attribute {name!r} must be numeric ({exc})") from exc


@torch.no_grad()
def extract_features(
    encode: Callable[[Batch], torch.Tensor],
    loader: Iterable[Batch],
    device: torch.device | str = "cpu",
    desc: str = "features",
    progress: bool | None = None,
) -> FeatureSet:
    """Encode every batch of ``loader`` and collect the features on the CPU.

    Runs under ``torch.no_grad()`` rather than ``inference_mode`` so the returned tensors can
    still feed autograd code later (e.g. a torch probe). The caller puts its modules in
    ``eval()`` mode; ``encode`` receives the batch with its tensors moved to ``device``.

    Args:
        encode: batch mapping -> (b, D) features (any float dtype; stored as float32).
        loader: yields mappings ``{"index": (b,), "image": ..., "label"?: (b,), "text"?: list of
            b str, "attrs"?: (b,) / (b, A) tensor or dict of (b,) tensors}``.
        device: where the batch tensors go before ``encode``.
        desc: progress-bar label.
        progress: show a tqdm bar (samples/s); default only when stderr is a terminal, so logs
            and CI output stay clean.

    Returns:
        :class:`FeatureSet` with N = total rows over the batches.

    Under DDP each rank extracts its own shard; gather the sets and call
    :meth:`FeatureSet.unique_by_id` to drop the sampler's padding.
    """
    device = torch.device(device)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    texts: list[str] = []
    attrs_t: list[torch.Tensor] = []
    attrs_d: dict[str, list[torch.Tensor]] = {}
    has_label = has_text = has_attrs = None  # decided by the first batch, then enforced
    empty_batches = 0

    bar = tqdm(
        total=_num_samples(loader),
        desc=desc,
        unit="img",
        unit_scale=True,
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
        disable=not _progress_enabled(progress),
    )
    try:
        for step, batch in enumerate(loader):
            if batch is None:  # collate_skip_none: every image of the batch was unreadable
                empty_batches += 1
                continue
            check(
                isinstance(batch, Mapping) and "index" in batch,
                "each batch must be a mapping with an 'index' entry (the sample ids); "
                "use a debiascl dataset or add the ids to your collate function",
                DataError,
            )
            index = torch.as_tensor(batch["index"]).reshape(-1).long().cpu()
            b = int(index.shape[0])
            out = encode(_to_device(batch, device))
            check(
                isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == b,
                f"encode must return a ({b}, D) tensor for a batch of {b} samples, got "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}",
                DataError,
            )
            feats.append(out.detach().float().cpu())
            ids.append(index)

            flags = ("label" in batch, isinstance(batch.get("text"), Sequence), "attrs" in batch)
            if has_label is None:
                has_label, has_text, has_attrs = flags
            check(
                flags == (has_label, has_text, has_attrs),
                f"batch {step} has different keys from the first batch; every batch must carry "
                "the same optional entries (label, text, attrs)",
                DataError,
            )
            if has_label:
                labels.append(torch.as_tensor(batch["label"]).reshape(-1).long().cpu())
            if has_text:
                texts.extend(str(t) for t in batch["text"])
            if has_attrs:
                value = batch["attrs"]
                if isinstance(value, Mapping):
                    for k, v in value.items():
                        attrs_d.setdefault(k, []).append(_as_attr_tensor(v, k))
                else:
                    attrs_t.append(_as_attr_tensor(value, "attrs"))
            bar.update(b)
    finally:
        bar.close()

    check(
        bool(feats),
        f"every image of the split was unreadable and skipped ({empty_batches} batches; "
        "data.on_bad_image=skip): check the files and that their format is readable"
        if empty_batches
        else "the loader yielded no batches; check the split and its size",
        DataError,
    )
    features = torch.cat(feats)
    n = features.shape[0]
    label_t = torch.cat(labels) if has_label else None
    check(
        label_t is None or label_t.shape[0] == n,
        f"got {0 if label_t is None else label_t.shape[0]} labels for {n} samples; each sample "
        "needs exactly one label",
        DataError,
    )
    check(
        not has_text or len(texts) == n,
        f"got {len(texts)} texts for {n} samples; each sample needs exactly one text",
        DataError,
    )
    attrs: torch.Tensor | dict[str, torch.Tensor] | None = None
    if attrs_d:
        attrs = {k: torch.cat(v) for k, v in attrs_d.items()}
    elif attrs_t:
        attrs = torch.cat(attrs_t)
    return FeatureSet(
        features=features,
        labels=label_t,
        ids=torch.cat(ids),
        texts=texts if has_text else None,
        attrs=attrs,
    )


def encode_split(
    model: nn.Module,
    encode: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    data: DataBundle,
    split: str,
    device: torch.device | str = "cpu",
) -> FeatureSet:
    """Features of a run's ``train`` or ``test`` split: evaluation transform, then ``encode``.

    Args:
        model: passed to ``encode`` (in ``eval()`` mode, the caller's business).
        encode: ``(model, images) -> (b, D)``, images (b, C, H, W) after the evaluation
            transform (resize, channels, normalisation as in training) on ``device``.
        data: the splits and the image size and channels the model receives.
        split: ``train`` or ``test``.

    Raises:
        DataError: the data has no such split.
    """
    dataset = data.train if split == "train" else data.test
    if dataset is None:
        raise DataError(f"the data has no {split} split to evaluate on")
    device = torch.device(device)
    transform = EvalTransform(data.image_size, data.channels).to(device)
    loader = make_loader(dataset, EVAL_BATCH, train=False, seed=0)

    def run(batch: Batch) -> torch.Tensor:
        return encode(model, transform(batch["image"].to(device)))

    return extract_features(run, loader, device, desc=f"features ({split})")
