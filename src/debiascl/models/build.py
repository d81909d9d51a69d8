"""Build the configured model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from debiascl.config.schema import ModelConfig
from debiascl.models.clip import SimCLRModel, TwoTowerModel
from debiascl.models.encoders import build_image_encoder
from debiascl.models.heads import projection_head
from debiascl.models.text import BagOfWordsTextEncoder, MiniLMTextEncoder


def build_model(
    cfg: ModelConfig, mode: str, channels: int, corpus: Sequence[str] | None = None
) -> nn.Module:
    """A :class:`SimCLRModel` (image_image) or :class:`TwoTowerModel` (image_text)."""
    encoder = build_image_encoder(
        cfg.encoder, channels, cfg.width, cfg.small_image_stem, cfg.pretrained
    )
    head = projection_head(encoder.feature_dim, cfg.proj_hidden_dim, cfg.embed_dim)
    if mode == "image_image":
        return SimCLRModel(encoder, head)
    if cfg.text_encoder == "minilm":
        text: nn.Module = MiniLMTextEncoder(trainable=cfg.text_trainable)
    else:
        text = BagOfWordsTextEncoder(corpus or [], dim=cfg.proj_hidden_dim)
    text_head = projection_head(text.feature_dim, cfg.proj_hidden_dim, cfg.embed_dim)
    return TwoTowerModel(
        encoder,
        head,
        text,
        text_head,
        cfg.logit_scale_init,
        cfg.learn_logit_scale,
        cfg.max_logit_scale,
    )
