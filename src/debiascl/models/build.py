"""Build the configured model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from debiascl.config.schema import ModelConfig
from debiascl.errors import ConfigError
from debiascl.models.clip import SimCLRModel, TwoTowerModel
from debiascl.models.encoders import build_image_encoder
from debiascl.models.heads import projection_head
from debiascl.models.text import BagOfWordsTextEncoder, MiniLMTextEncoder

log = logging.getLogger(__name__)


def build_text_encoder(cfg: ModelConfig, corpus: Sequence[str] | None = None) -> nn.Module:
    """The text tower named by ``cfg.text_encoder`` (minilm, bag_of_words or hf:<source>)."""
    name = cfg.text_encoder
    if name == "minilm":
        return MiniLMTextEncoder(cfg.text_trainable, cfg.text_max_length, cfg.text_train_layers)
    if name == "bag_of_words":
        return BagOfWordsTextEncoder(corpus or [], dim=cfg.proj_hidden_dim)
    if name.startswith("hf:"):
        from debiascl.models.hf_text import HFTextEncoder

        return HFTextEncoder(
            name.removeprefix("hf:"),
            cfg.text_pooling,
            cfg.text_max_length,
            cfg.text_trainable,
            cfg.text_train_layers,
        )
    raise ConfigError(
        f"model.text_encoder={name!r} needs model.encoder=open_clip:<architecture>"
        if name == "open_clip"
        else f"unknown text encoder {name!r}; choose minilm, bag_of_words, hf:<folder> or open_clip"
    )


def _build_open_clip(cfg: ModelConfig, mode: str) -> nn.Module:
    from debiascl.models.open_clip_model import build_open_clip_towers

    arch = cfg.encoder.removeprefix("open_clip:")
    if mode == "image_text" and cfg.text_encoder != "open_clip":
        raise ConfigError(
            f"model.encoder={cfg.encoder} is a whole CLIP model: set model.text_encoder=open_clip"
        )
    image, text, scale = build_open_clip_towers(arch, cfg.weights)
    if mode == "image_image":
        head = projection_head(image.feature_dim, cfg.proj_hidden_dim, cfg.embed_dim)
        return SimCLRModel(image, head)
    if cfg.embed_dim != image.feature_dim:
        raise ConfigError(
            f"{cfg.encoder} embeds into {image.feature_dim} dimensions: set "
            f"model.embed_dim={image.feature_dim}"
        )
    model = TwoTowerModel(image, nn.Identity(), text, nn.Identity())
    # The loss owns the temperature (loss.temperature); the checkpoint's value is kept for reference
    # (set loss.temperature = 1 / checkpoint_logit_scale to start where the checkpoint ended).
    model.checkpoint_logit_scale = scale
    log.info(
        "%s: the checkpoint's logit scale is %.4g; loss.temperature=%.4g starts from it",
        cfg.encoder,
        scale,
        1.0 / scale,
    )
    return model


def build_model(
    cfg: ModelConfig, mode: str, channels: int, corpus: Sequence[str] | None = None
) -> nn.Module:
    """A :class:`SimCLRModel` (image_image) or :class:`TwoTowerModel` (image_text)."""
    if cfg.encoder.startswith("open_clip:"):
        return _build_open_clip(cfg, mode)
    encoder = build_image_encoder(
        cfg.encoder, channels, cfg.width, cfg.small_image_stem, cfg.pretrained, cfg.weights
    )
    head = projection_head(encoder.feature_dim, cfg.proj_hidden_dim, cfg.embed_dim)
    if mode == "image_image":
        return SimCLRModel(encoder, head)
    text = build_text_encoder(cfg, corpus)
    text_head = projection_head(text.feature_dim, cfg.proj_hidden_dim, cfg.embed_dim)
    return TwoTowerModel(encoder, head, text, text_head)
