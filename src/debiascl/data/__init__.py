"""Datasets that return stable sample ids, built-in data, manifests and batched augmentation.

Entry points: :func:`debiascl.compose.build_data` (from a config),
:func:`debiascl.data.build.assemble_data` and :func:`debiascl.data.build.make_loader`; dataset
sources register in :data:`debiascl.registry.DATASETS`; augmentation in
:mod:`debiascl.data.augment` (imported on demand: it loads kornia).
"""

from debiascl.data.datasets import SampleDataset, TensorImageDataset, validate_ids
from debiascl.data.info import DatasetInfo

__all__ = ["DatasetInfo", "SampleDataset", "TensorImageDataset", "validate_ids"]
