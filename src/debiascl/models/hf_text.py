"""Text towers from Hugging Face transformers: any encoder by local folder or hub id.

``model.text_encoder: hf:/models/my-radiology-bert`` (or ``hf:org/name`` for a model already in
the local Hugging Face cache) loads the encoder with ``AutoModel`` and its own tokenizer, pools
the last hidden states (CLS token, attention-masked mean, or the model's pooler) and maps a list of
strings to features (b, hidden_size). Nothing is downloaded unless the process allows it, and no
process-wide environment variable is set: loading always passes ``local_files_only`` for folders
and tries the cache before the network for hub ids.

A fully frozen tower caches the embedding of each distinct text (caption datasets repeat texts,
so later epochs cost nothing); a tower with trainable layers encodes every batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from debiascl.errors import ConfigError

Pooling = Literal["cls", "mean", "pooler"]
POOLINGS = ("cls", "mean", "pooler")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(
            "Hugging Face text towers need transformers: pip install 'debiascl[text]'"
        ) from err
    return transformers


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or (
        os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false", "False")
    )


def load_hf_text(source: str) -> tuple[Any, Any]:
    """(tokenizer, model) from a local folder or a hub id, never downloading when offline.

    Raises:
        ConfigError: the folder is not a transformers model, or a hub id is neither in the local
            cache nor reachable (the message says how to pass a local folder instead).
    """
    tf = _transformers()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar for local models
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            tok = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model, info = tf.AutoModel.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True
            )
            model.debiascl_missing_keys = list(info.get("missing_keys", []))
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"text encoder folder {source!r} is not a transformers model with a tokenizer "
                f"({first}); save one with model.save_pretrained(dir) and "
                "tokenizer.save_pretrained(dir)"
            ) from None
        return tok, model
    if source.startswith(("/", ".", "~")) or os.sep + os.sep in source:
        raise ConfigError(f"text encoder folder {source!r} does not exist")
    attempts = [True] if _offline() else [True, False]
    last: Exception | None = None
    for local_only in attempts:
        try:
            tok = tf.AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            model, info = tf.AutoModel.from_pretrained(
                source, local_files_only=local_only, output_loading_info=True
            )
            model.debiascl_missing_keys = list(info.get("missing_keys", []))
            return tok, model
        except (OSError, ValueError) as err:
            last = err
    raise ConfigError(
        f"text encoder hub id {source!r} is not in the local Hugging Face cache and could not be "
        "downloaded (offline?); download it where there is network (huggingface-cli download "
        f"{source} --local-dir DIR) and pass model.text_encoder=hf:DIR"
    ) from last


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of an encoder (BERT-like ``encoder.layer`` or the longest
    ``nn.ModuleList`` with ``config.num_hidden_layers`` entries)."""
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not lists:
        raise ConfigError(
            f"cannot find the transformer layers of {type(model).__name__} to train the last "
            "k of; set model.text_train_layers=null (all layers)"
        )
    return lists[0]


class HFTextEncoder(nn.Module):
    """A transformers encoder with its tokenizer, pooled to (b, hidden_size) text features.

    Args:
        source: local folder (``save_pretrained`` output) or hub id (must be in the cache when
            offline).
        pooling: ``cls`` (first token's last hidden state), ``mean`` (attention-masked mean of the
            last hidden states; sentence-transformers' choice) or ``pooler`` (the model's own
            pooler output, e.g. BERT's tanh layer over CLS).
        max_length: tokens per text after truncation.
        trainable: whether any weights train.
        train_layers: with ``trainable``, only the last k transformer layers (and the pooler for
            ``pooling=pooler``) train; ``None`` trains everything.

    Raises:
        ConfigError: unknown pooling, a model without a pooler for ``pooling=pooler``, or
            ``train_layers`` larger than the number of layers.
    """

    def __init__(
        self,
        source: str,
        pooling: Pooling = "mean",
        max_length: int = 64,
        trainable: bool = False,
        train_layers: int | None = None,
        *,
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
        if max_length < 1:
            raise ConfigError(f"text max_length must be positive, got {max_length}")
        self.tokenizer, self.model = loaded if loaded is not None else load_hf_text(source)
        self.source = source
        self.pooling = pooling
        self.max_length = int(max_length)
        missing = getattr(self.model, "debiascl_missing_keys", [])
        if pooling == "pooler" and (
            getattr(self.model, "pooler", None) is None or any("pooler" in k for k in missing)
        ):
            raise ConfigError(
                f"{type(self.model).__name__} from {source!r} has no trained pooler; use "
                "model.text_pooling=cls or mean"
            )
        self.feature_dim = int(self.model.config.hidden_size)
        self.model.requires_grad_(False)
        self.train_layers = train_layers
        if trainable and train_layers is None:
            self.model.requires_grad_(True)
        elif trainable:
            layers = transformer_layers(self.model)
            if not 1 <= train_layers <= len(layers):
                raise ConfigError(
                    f"model.text_train_layers={train_layers} but the text encoder has "
                    f"{len(layers)} layers; choose 1..{len(layers)} or null for all"
                )
            for layer in layers[len(layers) - train_layers :]:
                layer.requires_grad_(True)
            if pooling == "pooler":
                self.model.pooler.requires_grad_(True)
        if pooling != "pooler" and getattr(self.model, "pooler", None) is not None:
            # unused by cls/mean pooling: a trainable parameter without gradient stalls DDP
            self.model.pooler.requires_grad_(False)
        self.trainable = any(p.requires_grad for p in self.model.parameters())
        self._cache: dict[str, torch.Tensor] = {}

    def pool(self, tokens: dict[str, torch.Tensor], output: Any) -> torch.Tensor:
        """(b, hidden_size) from the tokenizer output and the model output."""
        if self.pooling == "pooler":
            return output.pooler_output
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def tokenize(self, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(device) for k, v in tokens.items()}

    def _encode(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenize(texts, device)
        return self.pool(tokens, self.model(**tokens))

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

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # a frozen encoder keeps dropout off
        return self
