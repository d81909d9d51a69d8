"""Base for datasets whose images are files read lazily (manifests, image folders).

Holds the file paths and the reading policy: output channels and size, readers by suffix,
16-bit scaling and what to do with an unreadable file (error naming it, or skip and count).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from debiascl.data.datasets import SampleDataset
from debiascl.data.images import (
    BadImageHandler,
    BadImagePolicy,
    HighBitScaling,
    ImageReader,
    read_image,
)
from debiascl.errors import ConfigError


class ImageFileDataset(SampleDataset):
    """A :class:`SampleDataset` over image files; subclasses call :meth:`_init_files`."""

    def _init_files(
        self,
        paths: np.ndarray,
        channels: int,
        image_size: int,
        readers: Mapping[str, ImageReader] | None,
        high_bit_scaling: HighBitScaling,
        on_bad_image: BadImagePolicy,
    ) -> None:
        self.paths = paths
        self.channels = channels
        self.image_size = image_size
        self.readers = dict(readers or {})
        self.high_bit_scaling: HighBitScaling = high_bit_scaling
        self.bad_images = BadImageHandler(on_bad_image)

    @property
    def num_skipped(self) -> int:
        """Images skipped so far as unreadable (summed over DataLoader workers)."""
        return self.bad_images.counter.value

    def _load_image(self, row: int) -> torch.Tensor | None:
        path = self.paths[row]
        try:
            return read_image(
                path, self.channels, self.image_size, self.readers, self.high_bit_scaling
            )
        except ConfigError:
            raise  # a missing optional reader (e.g. pydicom) is not a bad image: never skip it
        except Exception as err:
            self.bad_images(path, row, err)
            return None

    def _select_storage(self, rows: np.ndarray) -> None:
        self.paths = self.paths[rows]
