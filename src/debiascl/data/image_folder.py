"""A ``root/<class>/<image>`` folder dataset with labels from folder names.

Sample ids follow the sorted relative paths (``class/file``), so they do not depend on the order
the file system lists files in and stay the same across machines, ranks and runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from debiascl.data.image_files import ImageFileDataset
from debiascl.data.images import (
    IMAGE_READERS,
    BadImagePolicy,
    HighBitScaling,
    ImageReader,
)
from debiascl.errors import ConfigError, DataError


class ImageFolderDataset(ImageFileDataset):
    """Images in ``root/<class name>/...`` (files in nested folders count for their class).

    Args:
        root: folder whose sub-folders are the classes.
        channels: 1 (L) or 3 (RGB) output channels.
        image_size: output side length (square resize), None keeps the size.
        class_names: the classes to use, in label order (default the sorted folder names). Pass
            the training classes for a test folder; a folder not among them is an error.
        on_bad_image: ``"error"`` or ``"skip"`` (as in ``ManifestDataset``).
        readers: extra readers by file suffix; only files with a known suffix are listed.
        high_bit_scaling: how 16-bit images become 8-bit.
    """

    def __init__(
        self,
        root: str | Path,
        channels: int = 1,
        image_size: int | None = 224,
        class_names: Sequence[str] | None = None,
        on_bad_image: BadImagePolicy = "error",
        readers: Mapping[str, ImageReader] | None = None,
        high_bit_scaling: HighBitScaling = "dtype",
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist; check data.root")
        suffixes = set(IMAGE_READERS) | set(readers or {})
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if class_names is None:
            class_names = found
        else:
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise DataError(
                    f"{self.root} has class folders {unknown} that the training data does not "
                    f"have (known: {list(class_names)}); remove them or add them to training"
                )
        if not class_names:
            raise DataError(f"{self.root} has no class sub-folders; expected root/<class>/<image>")
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(class_names):
            folder = self.root / name
            if not folder.is_dir():
                continue
            files = sorted(
                p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
            )
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            raise DataError(
                f"{self.root} has no image files (suffixes {', '.join(sorted(suffixes))})"
            )
        # Sort by the relative path so ids do not depend on class order or the file system.
        order = sorted(range(len(paths)), key=lambda i: paths[i].relative_to(self.root).as_posix())
        self._init_files(
            np.array([str(paths[i]) for i in order], dtype=object),
            channels,
            image_size,
            readers,
            high_bit_scaling,
            on_bad_image,
        )
        self._init_meta(
            len(order),
            [labels[i] for i in order],
            None,
            None,
            None,
            None,
            class_names=list(class_names),
        )
