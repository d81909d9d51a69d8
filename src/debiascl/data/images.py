"""Reading image files into uint8 (C, H, W) tensors, with pluggable readers by file suffix.

A reader takes a path and returns a PIL image or a numpy array ((H, W) or (H, W, 3|4), any
integer or float dtype). :func:`read_image` turns that into 8-bit L or RGB at a fixed size.
DICOM files (``.dcm``, ``.dicom``, or any file with the ``DICM`` signature that Pillow cannot
open) are read with :func:`debiascl.data.dicom.read_dicom`, which needs the ``dicom`` extra
(``pip install 'debiascl[dicom]'``; without it reading one is a :class:`ConfigError` saying so).
Plug in another format with :func:`register_image_reader` or per dataset through the ``readers``
argument::

    register_image_reader(".nii", read_nifti)   # read_nifti(path) -> np.ndarray

Unreadable images either raise :class:`DataError` naming the file or, with ``on_bad_image="skip"``,
make the dataset return None for that row; :func:`collate_skip_none` drops those rows from the
batch and :class:`SkipCounter` counts them across DataLoader worker processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate

from debiascl.data.dicom import DICOM_SUFFIXES, is_dicom_file, read_dicom
from debiascl.errors import ConfigError, DataError

logger = logging.getLogger("debiascl.data")

ImageReader = Callable[[Path], Image.Image | np.ndarray]
HighBitScaling = Literal["dtype", "minmax"]
BadImagePolicy = Literal["error", "skip"]


def read_pil(path: Path) -> Image.Image:
    """Open an image with Pillow and decode it fully (so truncated files fail here)."""
    with Image.open(path) as img:
        img.load()
        return img.copy()


#: Readers by lower-case file suffix; files with other suffixes are tried with Pillow (and with
#: the DICOM reader when they carry the DICOM signature).
IMAGE_READERS: dict[str, ImageReader] = {
    **{
        suffix: read_pil
        for suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm")
    },
    **dict.fromkeys(DICOM_SUFFIXES, read_dicom),
}


def register_image_reader(suffix: str, reader: ImageReader, overwrite: bool = False) -> None:
    """Read files ending in ``suffix`` (e.g. ``".dcm"``) with ``reader``."""
    key = suffix.lower() if suffix.startswith(".") else f".{suffix.lower()}"
    if key in IMAGE_READERS and not overwrite and IMAGE_READERS[key] is not reader:
        raise ValueError(f"a reader for {key} is already registered (pass overwrite=True)")
    IMAGE_READERS[key] = reader


def register_dicom_reader(overwrite: bool = True) -> None:
    """Let every dataset read ``.dcm``/``.dicom`` files with :func:`read_dicom` (the default;
    call it again after replacing those readers)."""
    for suffix in DICOM_SUFFIXES:
        register_image_reader(suffix, read_dicom, overwrite=overwrite)


def _to_uint8(array: np.ndarray, scaling: HighBitScaling) -> np.ndarray:
    """Map an integer or float array to uint8 0..255.

    ``dtype``: unsigned/signed integers are divided by the range of 16-bit (if every value fits)
    or of their own type; floats are taken to lie in [0, 1]. ``minmax``: per-image
    (x - min) / (max - min), for e.g. 12-bit values stored in 16-bit files.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    a = array.astype(np.float64)
    if scaling == "minmax":
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    elif np.issubdtype(array.dtype, np.integer):
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 65535:
            a = a / 65535.0
        else:
            info = np.iinfo(array.dtype)
            a = (a - info.min) / (float(info.max) - info.min)
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_pil(image: Image.Image | np.ndarray, scaling: HighBitScaling = "dtype") -> Image.Image:
    """An 8-bit Pillow image (mode L, LA, RGB, RGBA or P) from a reader's output."""
    if isinstance(image, Image.Image):
        if image.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            return image
        image = np.asarray(image)  # I;16*, I, F: high bit depth
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise DataError(f"image array has shape {array.shape}; expected (H, W) or (H, W, 3|4)")
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    return Image.fromarray(_to_uint8(array, scaling))


def read_image(
    path: str | Path,
    channels: int,
    image_size: int | None,
    readers: Mapping[str, ImageReader] | None = None,
    scaling: HighBitScaling = "dtype",
) -> torch.Tensor:
    """Read ``path`` into a uint8 (channels, image_size, image_size) tensor.

    Colour images become grey with Pillow's ITU-R 601-2 luma for ``channels=1``; grey images are
    repeated for ``channels=3``. The image is resized to a square with bilinear filtering (Pillow
    antialiases when shrinking); ``image_size=None`` keeps the original size.
    """
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    table = IMAGE_READERS if readers is None else {**IMAGE_READERS, **readers}
    reader = table.get(path.suffix.lower())
    if reader is None:
        try:
            raw = read_pil(path)
        except Image.UnidentifiedImageError:
            if not is_dicom_file(path):
                raise
            raw = read_dicom(path)  # e.g. MIMIC-CXR DICOMs without a suffix
    else:
        raw = reader(path)
    img = to_pil(raw, scaling).convert("L" if channels == 1 else "RGB")
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


class SkipCounter:
    """Number of skipped (unreadable) images, summed over DataLoader worker processes.

    Each process writes its own slot of a shared-memory tensor, so counts from concurrent workers
    never overwrite each other; :attr:`value` sums the slots.
    """

    _SLOTS = 257  # main process + up to 256 workers (more wrap around to the last slot)

    def __init__(self) -> None:
        self._counts = torch.zeros(self._SLOTS, dtype=torch.int64).share_memory_()

    def add(self, n: int = 1) -> None:
        info = get_worker_info()
        slot = 0 if info is None else min(info.id + 1, self._SLOTS - 1)
        self._counts[slot] += n

    @property
    def value(self) -> int:
        return int(self._counts.sum())

    def reset(self) -> None:
        self._counts.zero_()


class BadImageHandler:
    """What to do when an image cannot be read: raise, or log, count and skip it."""

    def __init__(self, policy: BadImagePolicy = "error") -> None:
        if policy not in ("error", "skip"):
            raise ConfigError(f"on_bad_image must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.counter = SkipCounter()
        self.skipped_files: list[str] = []  # this process only (all of them with num_workers=0)

    def __call__(self, path: str | Path, row: int, err: Exception) -> None:
        if self.policy == "error":
            raise DataError(
                f"cannot read image {path} (row {row}): {type(err).__name__}: {err}; fix or "
                "remove the file, or set data.on_bad_image=skip to skip unreadable images"
            ) from err
        self.counter.add(1)
        self.skipped_files.append(str(path))
        logger.warning("skipping unreadable image %s (row %d): %s", path, row, err)


def collate_skip_none(batch: list[Any]) -> Any:
    """``default_collate`` after dropping None items (skipped images); None if all were None.

    The batch then has fewer rows than requested; under DDP every rank must still agree on the
    batch size, so a trainer should skip or pad such a batch consistently.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return default_collate(kept)
