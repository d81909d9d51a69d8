"""A bounded sample of test-split embeddings, saved for the report's embedding view.

``test_embeddings.npz`` in the run directory holds ``features`` (n, D) float32, ``labels`` (n,)
int64 (-1 unknown), ``ids`` (n,) sample ids and, when the data has sensitive attributes,
``attr_names`` and ``attrs`` (n, A) int64 codes. At most ``max_points`` rows, chosen with a
seeded permutation so the same run always saves the same rows.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from debiascl.eval.features import FeatureSet

FILE_NAME = "test_embeddings.npz"


def _attr_matrix(
    attrs: torch.Tensor | dict[str, torch.Tensor] | None, n: int, names: list[str]
) -> tuple[list[str], np.ndarray | None]:
    if attrs is None:
        return [], None
    if isinstance(attrs, dict):
        keys = list(attrs)
        cols = [torch.as_tensor(attrs[k]).reshape(n) for k in keys]
        return keys, torch.stack(cols, 1).long().numpy()
    mat = torch.as_tensor(attrs).reshape(n, -1).long().numpy()
    keys = names if len(names) == mat.shape[1] else [f"attr{i}" for i in range(mat.shape[1])]
    return keys, mat


def embedding_sample_bytes(
    fs: FeatureSet, attr_names: list[str] | None = None, max_points: int = 2000, seed: int = 0
) -> bytes:
    """The ``.npz`` bytes of at most ``max_points`` rows of ``fs`` (see module docstring)."""
    n = len(fs)
    rows = np.sort(np.random.default_rng(seed).permutation(n)[: min(n, max_points)])
    labels = fs.labels.numpy() if fs.labels is not None else np.full(n, -1)
    names, attrs = _attr_matrix(fs.attrs, n, list(attr_names or []))
    arrays: dict[str, np.ndarray] = {
        "features": fs.features.float().numpy()[rows],
        "labels": np.asarray(labels, dtype=np.int64)[rows],
        "ids": fs.ids.long().numpy()[rows],
    }
    if attrs is not None:
        arrays["attrs"] = attrs[rows]
        arrays["attr_names"] = np.array(names)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_embedding_sample(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a ``test_embeddings.npz`` (None when the file does not exist)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
