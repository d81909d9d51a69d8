"""A dataset described by a CSV or Parquet manifest: one row per image.

The common medical layouts (CheXpert Plus, MIMIC-CXR-JPG joined with MIMIC-IV demographics) fit:
an image-path column, an optional report/caption column, an optional label column and
demographic attribute columns. Relative paths are resolved against the manifest's folder.

Categorical values (string labels, ``sex``, ``race``) become integer codes through a sorted
vocabulary built on the training manifest; pass that vocabulary to the test manifest so the codes
agree, and values the training data never showed raise a clear error. Integer columns keep their
values. Empty cells become -1 (unknown/missing): every numpy/pandas missing marker and blank
strings, by the library's one definition (:func:`debiascl.missing.missing_or_blank_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from debiascl.data.image_files import ImageFileDataset
from debiascl.data.images import (
    BadImagePolicy,
    HighBitScaling,
    ImageReader,
)
from debiascl.errors import ConfigError, DataError
from debiascl.missing import missing_or_blank_mask


def read_table(path: str | Path) -> Any:
    """A pandas DataFrame from a ``.csv``/``.tsv`` or ``.parquet``/``.pq`` file."""
    path = Path(path)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the 'tables' extra
        raise ConfigError("manifests need pandas: pip install 'debiascl[tables]'") from None
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; check data.manifest")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as err:
        raise DataError(f"cannot read manifest {path}: {type(err).__name__}: {err}") from err
    raise DataError(f"manifest {path} must end in .csv, .tsv, .parquet or .pq")


def encode_column(
    values: Any, name: str, vocab: Mapping[str, int] | None, source: str
) -> tuple[np.ndarray, dict[str, int]]:
    """Integer codes (n,) for one manifest column, -1 where the cell is empty.

    Integer-valued columns (ints, bools, or floats that are whole numbers) keep their values and
    return an empty vocabulary. Other columns are mapped through ``vocab`` if given (a value
    outside it is a :class:`DataError`), else through a new sorted vocabulary of their values.
    An empty ``vocab`` means the training column held integer codes; None means "build one".
    """
    import pandas as pd

    series = pd.Series(values)
    missing = missing_or_blank_mask(series.to_numpy())
    present = series[~missing]
    numeric = pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
    if vocab is not None and not vocab and not numeric and len(present):
        raise DataError(
            f"column {name!r} of {source} has text values but held integer codes in the "
            "training data; use the same encoding in both manifests"
        )
    if numeric and not vocab:
        as_float = present.astype(np.float64).to_numpy()
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise DataError(
                f"column {name!r} of {source} has non-integer values (e.g. {as_float[0]}); "
                "bin continuous values into categories first"
            )
        if as_float.size and as_float.min() < 0:
            raise DataError(
                f"column {name!r} of {source} has negative values; codes must be >= 0 "
                "(leave a cell empty for missing)"
            )
        codes = np.full(len(series), -1, dtype=np.int64)
        codes[~missing] = as_float.astype(np.int64)
        return codes, {}
    strings = present.astype(str)
    if vocab:
        table = dict(vocab)
        unseen = sorted(set(strings) - set(table))
        if unseen:
            known = ", ".join(sorted(table)[:20])
            raise DataError(
                f"column {name!r} of {source} has values {unseen[:5]} that the training data "
                f"never showed (known: {known}); add them to the training data or map them to a "
                "known value"
            )
    else:
        table = {v: i for i, v in enumerate(sorted(set(strings)))}
    codes = np.full(len(series), -1, dtype=np.int64)
    codes[~missing] = strings.map(table).to_numpy(dtype=np.int64)
    return codes, table


class ManifestDataset(ImageFileDataset):
    """Images listed in a CSV/Parquet manifest, read with Pillow (or a plugged-in reader).

    Args:
        manifest: path of the ``.csv``/``.parquet`` file.
        image_column: column of image paths (relative ones resolve against ``image_root``,
            default the manifest's folder).
        text_column: caption/report column, or None.
        label_column: class column, or None.
        attribute_columns: sensitive/demographic attribute columns, in order.
        id_column: sample-id column (distinct ints >= 0), or None for row order.
        channels: 1 (L) or 3 (RGB) output channels.
        image_size: output side length (images are resized to a square), None keeps the size.
        attr_vocab: per attribute column, the training vocabulary (value -> code).
        label_vocab: the training label vocabulary (value -> code), for string labels.
        on_bad_image: ``"error"`` raises :class:`DataError` naming the file; ``"skip"`` makes
            ``__getitem__`` return None (use :func:`debiascl.data.images.collate_skip_none`) and
            counts it in :attr:`num_skipped`.
        readers: extra readers by file suffix (e.g. ``{".dcm": read_dicom}``).
        high_bit_scaling: how 16-bit images become 8-bit (see :func:`read_image`).
        num_samples: id-space size (default max id + 1).
    """

    def __init__(
        self,
        manifest: str | Path,
        image_column: str = "path",
        text_column: str | None = None,
        label_column: str | None = None,
        attribute_columns: Sequence[str] = (),
        id_column: str | None = None,
        channels: int = 1,
        image_size: int | None = 224,
        attr_vocab: Mapping[str, Mapping[str, int]] | None = None,
        label_vocab: Mapping[str, int] | None = None,
        on_bad_image: BadImagePolicy = "error",
        readers: Mapping[str, ImageReader] | None = None,
        high_bit_scaling: HighBitScaling = "dtype",
        image_root: str | Path | None = None,
        num_samples: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        self.manifest = Path(manifest)
        df = read_table(self.manifest)
        source = f"manifest {self.manifest}"
        wanted = {
            "image": image_column,
            "text": text_column,
            "label": label_column,
            "id": id_column,
        }
        needed = [c for c in wanted.values() if c is not None] + list(attribute_columns)
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(
                f"{source} has no column(s) {', '.join(map(repr, missing))}; available columns: "
                f"{', '.join(map(repr, map(str, df.columns)))}; set the data.*_column options"
            )
        n = len(df)

        root = Path(image_root) if image_root is not None else self.manifest.resolve().parent
        raw_paths = df[image_column].to_numpy()
        empty = np.flatnonzero(missing_or_blank_mask(raw_paths))
        if empty.size:
            raise DataError(
                f"{empty.size} rows of {source} have no image path in column {image_column!r} "
                f"(first row {int(empty[0])}); fill or drop them"
            )
        paths = np.array(
            [str(p if (p := Path(str(v))).is_absolute() else root / p) for v in raw_paths],
            dtype=object,
        )

        texts = None
        if text_column is not None:
            raw = df[text_column].to_numpy()
            empty = np.flatnonzero(missing_or_blank_mask(raw))
            if empty.size:
                raise DataError(
                    f"{empty.size} rows of {source} have no text in column {text_column!r} "
                    f"(first row {int(empty[0])}); fill or drop them"
                )
            texts = [str(t) for t in raw]

        labels = None
        class_names = None
        self.label_vocab: dict[str, int] = {}
        if label_column is not None:
            labels, self.label_vocab = encode_column(
                df[label_column].to_numpy(), label_column, label_vocab, source
            )
            if self.label_vocab:
                class_names = sorted(self.label_vocab, key=self.label_vocab.__getitem__)

        attrs = None
        vocab_out: dict[str, dict[str, int]] = {}
        if attribute_columns:
            cols = []
            for name in attribute_columns:
                given = (attr_vocab or {}).get(name)
                codes, table = encode_column(df[name].to_numpy(), name, given, source)
                cols.append(codes)
                if table:
                    vocab_out[name] = table
            attrs = np.stack(cols, axis=1)

        ids = None
        if id_column is not None:
            raw = df[id_column]
            # pandas extension dtypes (StringDtype, Int64) are not numpy dtypes: ask pandas.
            from pandas.api.types import is_integer_dtype

            if bool(raw.isna().any()) or not is_integer_dtype(raw.dtype):
                raise DataError(
                    f"id column {id_column!r} of {source} must hold integers in every row "
                    f"(got dtype {raw.dtype}); fix it or unset data.id_column to use row order"
                )
            ids = raw.to_numpy(dtype=np.int64)

        self._init_files(paths, channels, image_size, readers, high_bit_scaling, on_bad_image)
        try:
            self._init_meta(
                n,
                labels,
                texts,
                attrs,
                ids,
                num_samples,
                list(attribute_columns),
                vocab_out,
                class_names,
            )
        except DataError as err:
            raise DataError(f"{source}: {err}") from None
