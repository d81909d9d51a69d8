"""On-disk cache of per-text values (log-probabilities) keyed by the text itself.

Scoring every caption or report with a masked language model is the expensive part of SSD, so it
is done once per dataset and stored. An entry's key is the SHA-256 of the text, inside a file named
by a fingerprint of the source and its parameters (model, truncation, corpus, ...): together that is
a key of (text, source, parameters). Keys never depend on the sample id or the row order, so the
cache survives shuffled, filtered or extended manifests.

File format (JSON, written atomically)::

    {"source": "mlm_pll", "params": {...}, "values": {"<sha256 of text>": -12.3, ...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from debiascl.errors import DataError


def text_key(text: str) -> str:
    """SHA-256 hex digest of the UTF-8 text (the per-entry cache key)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(source: str, params: Mapping[str, object]) -> str:
    """Short stable hash of a source name and its JSON-serialisable parameters."""
    blob = json.dumps({"source": source, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """Order-independent hash of a multiset of texts (reordering keeps it, editing changes it)."""
    digest = hashlib.sha256()
    for key in sorted(text_key(t) for t in texts):
        digest.update(key.encode("ascii"))
    return digest.hexdigest()[:16]


class TextValueCache:
    """A map text -> float for one (source, parameters) pair, persisted under ``directory``.

    Args:
        directory: folder of cache files; ``None`` keeps the cache in memory only.
        source: name of the value's source (e.g. ``"mlm_pll"``, ``"corpus_ngram"``).
        params: everything the value depends on besides the text.

    Attributes:
        hits / misses: texts found / computed by the last :meth:`get_or_compute` call.
    """

    def __init__(
        self, directory: str | Path | None, source: str, params: Mapping[str, object]
    ) -> None:
        self.source = source
        self.params = dict(params)
        self.path = (
            Path(directory) / f"{source}-{fingerprint(source, self.params)}.json"
            if directory is not None
            else None
        )
        self._values: dict[str, float] | None = None
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[str, float]:
        if self._values is not None:
            return self._values
        self._values = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._values = {str(k): float(v) for k, v in data["values"].items()}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"cannot read the eta cache file {self.path} ({exc}); delete it to recompute"
                ) from exc
        return self._values

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"source": self.source, "params": self.params, "values": self._load()}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(payload, f, default=str)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._load()

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) float64 values of ``texts``; raises :class:`DataError` for a text not cached."""
        values = self._load()
        out = np.empty(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            key = text_key(text)
            if key not in values:
                where = f" in {self.path}" if self.path is not None else ""
                raise DataError(
                    f"text {text[:60]!r} has no cached {self.source} value{where}; compute the "
                    f"cache for this dataset first (or remove eta_cache_readonly)"
                )
            out[i] = values[key]
        return out

    def get_or_compute(
        self, texts: Sequence[str], compute: Callable[[list[str]], Sequence[float]]
    ) -> np.ndarray:
        """(n,) float64 values of ``texts``, computing (once per distinct text) the missing ones.

        ``compute`` receives the distinct uncached texts and returns one value per text. The cache
        file is rewritten only when something new was computed.
        """
        values = self._load()
        keys = [text_key(t) for t in texts]
        todo: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in values and key not in todo:
                todo[key] = text
        self.misses = len(todo)
        self.hits = len(set(keys)) - len(todo)
        if todo:
            new = list(compute(list(todo.values())))
            if len(new) != len(todo):
                raise RuntimeError(f"compute returned {len(new)} values for {len(todo)} texts")
            values.update({k: float(v) for k, v in zip(todo, new, strict=True)})
            self._save()
        return np.array([values[k] for k in keys], dtype=np.float64)
