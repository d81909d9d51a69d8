"""Frozen text embeddings per sample id (``negatives.text_encoder``), for text evidence.

Computed once before training from the dataset's captions/reports (rank 0 encodes, every rank
receives the same table), so the text-evidence detector and diagnostics are pure given ids.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch

from debiascl import distributed as dist_utils
from debiascl.errors import ConfigError

_TOKEN = re.compile(r"[a-z0-9]+")
TEXT_ENCODERS = ("minilm", "tfidf")


def hashed_tfidf(texts: Sequence[str], dim: int = 4096) -> torch.Tensor:
    """(n, dim) float32 TF-IDF of lower-cased word tokens, hashed (CRC-32) into ``dim`` columns.

    IDF is ``log((1 + n) / (1 + df)) + 1`` over the given texts (scikit-learn's smooth IDF).
    Identical texts get identical rows; no weights to download.
    """
    tokens = [_TOKEN.findall(t.lower()) for t in texts]
    df: dict[str, int] = {}
    for toks in tokens:
        for w in set(toks):
            df[w] = df.get(w, 0) + 1
    n = len(texts)
    out = torch.zeros(n, dim, dtype=torch.float64)
    for row, toks in enumerate(tokens):
        for w in toks:
            idf = torch.log(torch.tensor((1.0 + n) / (1.0 + df[w]), dtype=torch.float64)) + 1.0
            out[row, zlib.crc32(w.encode()) % dim] += idf
    return out.float()


def _minilm(texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    from debiascl.models.text import MiniLMTextEncoder

    encoder = MiniLMTextEncoder(trainable=False).eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            parts.append(encoder(list(texts[start : start + batch_size])).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 384)


def frozen_text_embeddings(texts: Sequence[str] | None, encoder: str = "minilm") -> torch.Tensor:
    """(N, D) float32 embedding of each sample id's text under a frozen encoder.

    Each distinct text is encoded once. ``encoder``: ``"minilm"`` (all-MiniLM-L6-v2 sentence
    embeddings, the ``text`` extra) or ``"tfidf"`` (:func:`hashed_tfidf`). Ids without text
    (``""``) get a zero row (text similarity 0 to everything).

    Raises:
        ConfigError: no texts (data without captions) or an unknown encoder.
    """
    if texts is None:
        raise ConfigError(
            "text evidence needs a caption/report per sample: use data.mode=image_text or a "
            "manifest with data.text_column"
        )
    if encoder not in TEXT_ENCODERS:
        raise ConfigError(
            f"unknown negatives.text_encoder {encoder!r}; choose one of {', '.join(TEXT_ENCODERS)}"
        )
    table: torch.Tensor | None = None
    if dist_utils.is_main_process():
        unique = sorted({t for t in texts if t})
        index = {t: i for i, t in enumerate(unique)}
        emb = hashed_tfidf(unique) if encoder == "tfidf" else _minilm(unique)
        table = torch.zeros(len(texts), emb.shape[1] if unique else 1)
        rows = [i for i, t in enumerate(texts) if t]
        if rows:
            table[torch.tensor(rows)] = emb[torch.tensor([index[texts[i]] for i in rows])]
    table = dist_utils.broadcast_object(table)
    assert isinstance(table, torch.Tensor)
    return table
