"""Shared pieces of the in-process CLI tests: a small model, ``main`` with captured output, the
one-line error check and a DICOM writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from debiascl.cli import main

SMALL = ["train.batch_size=8", "model.width=4", "model.proj_hidden_dim=16", "model.embed_dim=8"]


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``debiascl.cli.main(argv)`` run in this process."""
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def train_argv(run: Path, manifest: Path, *extra: str) -> list[str]:
    """``debiascl train digits_simclr`` argv on a manifest: no evaluation, the SMALL model, then
    the ``extra`` overrides."""
    return [
        "train",
        "digits_simclr",
        "--run-dir",
        str(run),
        "--no-eval",
        "data.dataset=manifest",
        f"data.manifest={manifest}",
        *SMALL,
        *extra,
    ]


def one_line_error(err: str, *needles: str) -> str:
    """Assert ``err`` is one ``debiascl: error:`` line (warnings about skipped unreadable images
    aside) without a traceback, containing every needle; returns that line."""
    lines = [line for line in err.splitlines() if line.strip() and "skipping" not in line]
    assert len(lines) == 1 and lines[0].startswith("debiascl: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> None:
    """Write ``pixels`` as a 12-bit (stored in 16) single-frame DICOM with pydicom."""
    pytest.importorskip("pydicom")  # the 'dicom' extra; in the test extra
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
