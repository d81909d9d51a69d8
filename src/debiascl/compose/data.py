"""Datasets and augmentation of a run config (``data`` section)."""

from __future__ import annotations

from torch import nn

from debiascl.config.schema import DataConfig
from debiascl.data import sources as _sources  # noqa: F401  (registers the built-in datasets)
from debiascl.data import synthetic_attr as _synthetic_attr  # noqa: F401  (synthetic_attr)
from debiascl.data import tinted as _tinted  # noqa: F401  (tinted_fashion_mnist)
from debiascl.data.augment import make_augment
from debiascl.data.build import DataBundle, assemble_data
from debiascl.data.classes import select_classes
from debiascl.errors import ConfigError
from debiascl.registry import DATASETS


def build_data(cfg: DataConfig, seed: int) -> DataBundle:
    """The train/test datasets and :class:`~debiascl.data.info.DatasetInfo` that ``cfg``
    describes: the ``data.dataset`` entry of :data:`~debiascl.registry.DATASETS` (given the
    ``data`` settings its signature names) assembled by
    :func:`~debiascl.data.build.assemble_data`.

    ``seed`` (the run seed) picks the training subset (unless ``data.subset_seed`` is set) and the
    training captions; the test subset and captions use fixed seeds.

    Raises:
        ConfigError: an unknown dataset name (the message lists the registered ones) or any
            dataset's own configuration error.
    """
    if cfg.side_captions and cfg.mode == "image_text":
        raise ConfigError(
            "data.side_captions is for image_image mode (image_text data always has captions); "
            "remove it"
        )
    train, test = DATASETS.build_with(cfg.dataset, cfg.model_dump())
    if getattr(train, "streaming", False):  # shards: nothing to subset or caption up front
        return DataBundle(
            train=train,
            test=test,
            info=train.info(),
            class_names=None,
            channels=cfg.channels,
            image_size=cfg.image_size,
            mode=cfg.mode,
            text_corpus=train.corpus,
        )
    if cfg.classes:  # class subset of both splits (a regime's false-negative base rate)
        train = select_classes(train, cfg.classes, "train")
        test = select_classes(test, cfg.classes, "test") if test is not None else None
    return assemble_data(
        train,
        test,
        seed=seed,
        dataset=cfg.dataset,
        mode=cfg.mode,
        channels=cfg.channels,
        image_size=cfg.image_size,
        train_size=cfg.train_size,
        test_size=cfg.test_size,
        subset_seed=cfg.subset_seed,
        subsample_classes=list(cfg.subsample_classes),
        subsample_fraction=cfg.subsample_fraction,
        caption_templates=cfg.caption_templates,
        validation_size=cfg.validation_size,
        side_captions=cfg.side_captions,
    )


def build_augment(cfg: DataConfig) -> nn.Module:
    """The training augmentation of ``cfg``: two views (image_image) or one (image_text)."""
    return make_augment(cfg.mode, cfg.image_size, cfg.channels, cfg.augment, cfg.blur)
