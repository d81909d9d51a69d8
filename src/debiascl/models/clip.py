"""Models for the two training modes: a SimCLR encoder+head and a CLIP-style two-tower model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SimCLRModel(nn.Module):
    """Image encoder + projection head. ``forward`` returns projections (b, embed_dim)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (b, F) used by linear probes and kNN."""
        return self.encoder(x)


class TwoTowerModel(nn.Module):
    """CLIP-style model: image tower, text tower and their projections.

    The logit scale (temperature) is not part of the model: the contrastive loss owns it
    (:class:`debiascl.objectives.scale.LogitScale`), fixed or learned, so there is one value per
    run and evaluation uses the one that was trained.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        image_head: nn.Module,
        text_encoder: nn.Module,
        text_head: nn.Module,
    ) -> None:
        super().__init__()
        self.encoder = image_encoder
        self.head = image_head
        self.text_encoder = text_encoder
        self.text_head = text_head

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_head(self.text_encoder(texts))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(
        self, images: torch.Tensor, texts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(texts)
