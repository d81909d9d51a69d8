"""Assemble datasets into a :class:`DataBundle` (:func:`assemble_data`) and their loaders
(:func:`make_loader`), from plain arguments.

Dataset sources live in the :data:`~debiascl.registry.DATASETS` registry (see
:mod:`debiascl.data.sources`): factories taking plain keyword arguments and returning
``(train, test | None)`` :class:`SampleDataset` objects with labels and class names where known.
:func:`debiascl.compose.build_data` reads the ``data`` section, builds the named source and calls
:func:`assemble_data`, which takes the ``train_size`` / ``test_size`` subsets and attaches captions
in ``image_text`` mode. Another dataset registers itself with ``@DATASETS.register("name")``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from debiascl import distributed as dist_utils
from debiascl.data.captions import make_captions, with_article
from debiascl.data.datasets import SampleDataset
from debiascl.data.images import collate_skip_none
from debiascl.data.info import DatasetInfo
from debiascl.errors import ConfigError
from debiascl.registry import DATASETS

__all__ = [
    "DATASETS",
    "DataBundle",
    "EpochShuffleSampler",
    "assemble_data",
    "make_loader",
    "stratified_subset",
    "subsample_classes_rows",
]

#: Seed of the test-split captions and (without data.subset_seed) the test subset: fixed, so runs
#: with different seeds are evaluated on identical test data.
TEST_SEED = 0
#: Seed of the validation rows held out of the training split (``validation_size``): fixed and
#: independent of the run seed, so every run of a settings search is scored on the same rows.
VALIDATION_SEED = 20261130


@dataclass
class DataBundle:
    """Everything the trainer and evaluation need to know about the data.

    Attributes:
        train, test: datasets yielding the batch mapping of :mod:`debiascl.data.datasets`
            (``test`` is None when the source has no test split).
        info: :class:`DatasetInfo` of the training set, indexed by sample id.
        class_names: class names by label, or None.
        channels, image_size: what the model receives after augmentation (``data.channels``,
            ``data.image_size``); stored images may differ (the augmentation converts).
        mode: ``image_image`` or ``image_text``.
        attr_names, attr_vocab: attribute columns and their value -> code vocabularies.
        eval_split: what ``test`` holds: ``"test"`` (the source's test split) or
            ``"validation"`` (training samples held out by ``data.validation_size``).
    """

    train: SampleDataset
    test: SampleDataset | None
    info: DatasetInfo
    class_names: list[str] | None
    channels: int
    image_size: int
    mode: str = "image_image"
    attr_names: list[str] = field(default_factory=list)
    attr_vocab: dict[str, dict[str, int]] = field(default_factory=dict)
    eval_split: str = "test"
    #: texts a bag-of-words text tower takes its vocabulary from when ``info`` holds no
    #: per-sample texts (streamed shards: the index's caption words); see :attr:`corpus`
    text_corpus: list[str] | None = None

    @property
    def corpus(self) -> list[str] | None:
        """The training texts a bag-of-words text tower builds its vocabulary from."""
        return self.text_corpus if self.text_corpus is not None else self.info.texts

    @property
    def prompt_names(self) -> list[str] | None:
        """Class names as the captions word them (``"an ankle boot"``), for zero-shot prompts.

        ``template.format(name)`` over :func:`debiascl.data.captions.prompt_templates` then
        reproduces the default-style training captions exactly.
        """
        if self.class_names is None:
            return None
        return [with_article(n) for n in _caption_names(self.class_names)]


def stratified_subset(labels: torch.Tensor | np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted rows of a seeded subset of ``size`` rows keeping each class's share.

    Classes (``-1`` counts as one) get ``size * n_c / n`` rows rounded by largest remainder
    (ties to the lower class), drawn without replacement.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = labels.size
    if size > n:
        raise ConfigError(f"subset size {size} exceeds the {n} available samples; lower it")
    if size == n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / n
    quota = np.floor(exact).astype(np.int64)
    remainder = size - int(quota.sum())
    order = np.lexsort((classes, -(exact - quota)))  # largest fraction first, then class
    quota[order[:remainder]] += 1
    rng = np.random.default_rng(seed)
    rows = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(rows))


# ------------------------------------------------------------------------- assembly
def _subset(ds: SampleDataset, size: int | None, seed: int, what: str) -> SampleDataset:
    if size is None or size == len(ds):
        return ds
    if size > len(ds):
        raise ConfigError(
            f"data.{what}_size={size} exceeds the {len(ds)} {what} samples; lower it or unset it"
        )
    return ds.select(stratified_subset(ds.labels, size, seed))


def subsample_classes_rows(
    labels: torch.Tensor | np.ndarray, classes: list[int], fraction: float, seed: int
) -> np.ndarray:
    """Sorted rows keeping every sample of other classes and a seeded ``fraction`` of each of
    ``classes`` (at least one sample each): a controlled class imbalance (as in SSD's study,
    Wang et al. MLHC 2023). Class c keeps ``max(1, round(fraction * n_c))`` samples."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    present = set(np.unique(labels).tolist())
    missing = sorted(set(classes) - present)
    if missing:
        raise ConfigError(
            f"data.subsample_classes lists classes {missing} that the training set does not "
            f"contain (labels present: {sorted(present)}); fix the class list"
        )
    rng = np.random.default_rng(seed)
    keep = np.ones(labels.size, dtype=bool)
    for c in sorted(set(classes)):
        members = np.flatnonzero(labels == c)
        take = max(1, int(np.floor(fraction * members.size + 0.5)))
        keep[members] = False
        keep[rng.permutation(members)[:take]] = True
    return np.flatnonzero(keep)


def _caption_names(class_names: list[str]) -> list[str]:
    """Folder-style names (``ankle_boot``) as words (``ankle boot``)."""
    return [n.replace("_", " ") for n in class_names]


def _attach_captions(ds: SampleDataset, dataset: str, templates: str, seed: int) -> SampleDataset:
    if ds.texts is not None:
        return ds
    if ds.class_names is None or bool((ds.labels < 0).any()):
        raise ConfigError(
            f"data.mode=image_text needs a caption for every sample: dataset {dataset!r} "
            "has no text column and not every sample has a named class; set data.text_column "
            "or label every sample"
        )
    return ds.with_texts(
        make_captions(
            _caption_names(ds.class_names),
            ds.labels.numpy(),
            ds.ids.numpy(),
            templates,
            seed,
        )
    )


def assemble_data(
    train: SampleDataset,
    test: SampleDataset | None,
    *,
    seed: int,
    dataset: str = "dataset",
    mode: str = "image_image",
    channels: int = 1,
    image_size: int = 28,
    train_size: int | None = None,
    test_size: int | None = None,
    subset_seed: int | None = None,
    subsample_classes: list[int] | None = None,
    subsample_fraction: float = 1.0,
    caption_templates: str = "default",
    validation_size: int | None = None,
    side_captions: bool = False,
) -> DataBundle:
    """The :class:`DataBundle` of a dataset's ``train`` / ``test`` splits.

    Takes the ``train_size`` / ``test_size`` class-stratified subsets, the controlled class
    imbalance (``subsample_classes`` keep ``subsample_fraction``), and in ``image_text`` mode
    attaches captions to splits without texts. ``seed`` (the run seed) picks the training subset
    (unless ``subset_seed`` is set) and the training captions; the test subset and test captions
    use fixed seeds so every run is evaluated on the same test data. ``dataset`` names the data in
    errors.

    ``validation_size`` holds out that many class-stratified training samples (fixed seed
    :data:`VALIDATION_SEED`, drawn before ``train_size``, disjoint from the training subset) and
    evaluates on them instead of the test split (``DataBundle.eval_split == "validation"``):
    the split on which to choose settings, so the test split is never looked at while tuning.

    ``side_captions`` (image_image mode) attaches the caption templates to the training split
    as side evidence -- for text detectors (``text_sim``), text diagnostics and the
    ``text_agreement`` start rule, like the reports beside images in a medical archive -- while
    the model sees images only.

    Raises:
        ConfigError: a subset larger than its split, ``test_size`` without a test split, or
            image_text data whose samples cannot all be captioned.
    """
    train_seed = subset_seed if subset_seed is not None else seed
    test_seed = subset_seed if subset_seed is not None else TEST_SEED
    eval_split = "test"
    if validation_size is not None:
        if test_size is not None:
            raise ConfigError(
                "data.test_size subsets the test split, which data.validation_size replaces "
                "for evaluation; unset one of them"
            )
        if validation_size >= len(train):
            raise ConfigError(
                f"data.validation_size={validation_size} leaves no training samples out of "
                f"{len(train)}; lower it"
            )
        val_rows = stratified_subset(train.labels, validation_size, VALIDATION_SEED)
        rest = np.setdiff1d(np.arange(len(train)), val_rows)
        test, train = train.select(val_rows), train.select(rest)
        eval_split = "validation"
    train = _subset(train, train_size, train_seed, "train")
    if subsample_classes and subsample_fraction < 1.0:
        rows = subsample_classes_rows(
            train.labels, subsample_classes, subsample_fraction, train_seed
        )
        train = train.select(rows)
    if test is not None and eval_split == "test":
        test = _subset(test, test_size, test_seed, "test")
    elif test_size is not None:
        raise ConfigError(f"data.test_size is set but dataset {dataset!r} has no test split")
    if mode == "image_text" or side_captions:
        train = _attach_captions(train, dataset, caption_templates, seed)
        if test is not None and mode == "image_text":
            test = _attach_captions(test, dataset, caption_templates, TEST_SEED)
    return DataBundle(
        train=train,
        test=test,
        info=train.info(),
        class_names=train.class_names,
        channels=channels,
        image_size=image_size,
        mode=mode,
        attr_names=list(train.attr_names),
        attr_vocab=dict(train.attr_vocab),
        eval_split=eval_split,
    )


# ------------------------------------------------------------------------- loaders
class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)``: reproducible and resumable.

    Call :meth:`set_epoch` before each epoch, like ``DistributedSampler``.
    """

    def __init__(self, num_rows: int, seed: int) -> None:
        self.num_rows = int(num_rows)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_rows, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_rows


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int = 0,
    shard: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding the batch mapping.

    Args:
        batch_size: rows per batch *in this process* (the per-rank share of the global batch).
        train: shuffle with a seeded, per-epoch permutation and drop the last incomplete batch
            (every step must have the same per-rank batch size for the all-gather). Under
            ``torch.distributed`` each rank reads its own ``DistributedSampler`` shard
            (``drop_last=True``); call ``loader.sampler.set_epoch(epoch)`` every epoch.
        seed: shuffling seed (the same on every rank).
        num_workers: loader processes (``data.num_workers``).
        shard: for evaluation (``train=False``), split the rows over ranks with a non-shuffling
            ``DistributedSampler`` (which pads with repeats); by default every rank reads all.
        pin_memory: default True when CUDA is available.

    Rows whose image was skipped as unreadable are dropped by :func:`collate_skip_none`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if getattr(dataset, "streaming", False):  # shards: streamed (training: this rank's share)
        from debiascl.data.shard_source import make_stream_loader

        return make_stream_loader(dataset, batch_size, seed, num_workers, train)  # type: ignore[arg-type]
    sampler: Sampler[int]
    if dist_utils.is_distributed() and (train or shard):
        sampler = DistributedSampler(
            dataset,
            num_replicas=dist_utils.world_size(),
            rank=dist_utils.rank(),
            shuffle=train,
            seed=seed,
            drop_last=train,
        )
    elif train:
        sampler = EpochShuffleSampler(len(dataset), seed)  # type: ignore[arg-type]
    else:
        sampler = SequentialSampler(dataset)  # type: ignore[arg-type]
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        collate_fn=collate_skip_none,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )


def __getattr__(name: str) -> object:
    # ImportError (not AttributeError) so that `from ... import` shows where it went
    if name == "build_data":  # moved with the other config readers
        raise ImportError(
            "debiascl.data.build.build_data moved to debiascl.compose.build_data (it reads the "
            "data config); assemble_data here takes plain arguments"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
