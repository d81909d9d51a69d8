"""Models for the two training modes: a SimCLR encoder+head and a CLIP-style two-tower model."""

from __future__ import annotations

import math
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
    """CLIP-style model: image tower, text tower, projections and a learnable logit scale.

    The logit scale is stored as log(scale) and clamped at ``max_logit_scale`` as in CLIP
    (Radford et al., 2021, Sec. 2.5).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        image_head: nn.Module,
        text_encoder: nn.Module,
        text_head: nn.Module,
        logit_scale_init: float = 1 / 0.07,
        learn_logit_scale: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.encoder = image_encoder
        self.head = image_head
        self.text_encoder = text_encoder
        self.text_head = text_head
        log_scale = torch.tensor(math.log(logit_scale_init))
        if learn_logit_scale:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=self.max_log_scale).exp()

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
