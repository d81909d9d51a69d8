"""Optional DICOM reader (extra ``dicom``: pydicom) for the manifest loader's reader registry.

:func:`read_dicom` returns a float32 (H, W) array in [0, 1] that
:func:`debiascl.data.images.read_image` turns into 8-bit grey:

1. stored values -> modality values with ``RescaleSlope``/``RescaleIntercept``;
2. windowing with the file's first ``WindowCenter``/``WindowWidth`` (DICOM PS3.3 C.11.2.1.2,
   linear function) when present, else per-image min-max;
3. ``PhotometricInterpretation = MONOCHROME1`` (high values dark) is inverted so that, as in
   MONOCHROME2, bone is bright.

Multi-frame files use their first frame. Every dataset that reads image files (manifests, image
folders, the medical manifests of :mod:`debiascl.data.medical`) reads ``.dcm``/``.dicom`` files,
and files of another suffix that carry the DICOM signature, with it; without pydicom reading one
is a :class:`ConfigError` that names the extra to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from debiascl.errors import ConfigError, DataError

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` carries the DICOM Part 10 signature (``DICM`` after a 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _first(value: object) -> float:
    """First number of a possibly multi-valued DICOM element."""
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def read_dicom(path: str | Path) -> np.ndarray:
    """Pixels of a 1-channel DICOM file as float32 (H, W) in [0, 1] (see the module docstring)."""
    try:
        import pydicom
    except ImportError:  # pydicom is in the 'dicom' extra
        raise ConfigError(
            f"{path} is a DICOM file and reading DICOM needs pydicom: pip install 'debiascl[dicom]'"
        ) from None
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as err:
        raise DataError(f"cannot read DICOM {path}: {type(err).__name__}: {err}") from err
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            f"DICOM {path} has PhotometricInterpretation {photometric}; only 1-channel "
            "(MONOCHROME1/2) radiographs are supported"
        )
    if pixels.ndim == 3:  # multi-frame: (frames, H, W)
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise DataError(f"DICOM {path} has pixel array shape {pixels.shape}; expected (H, W)")
    x = pixels.astype(np.float64)
    x = x * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    center = getattr(ds, "WindowCenter", None)
    width = getattr(ds, "WindowWidth", None)
    if center is not None and width is not None and _first(width) > 1:
        c, w = _first(center), _first(width)
        x = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if photometric == "MONOCHROME1":
        x = 1.0 - x
    return x.astype(np.float32)
