"""Build a model from plain arguments (:func:`create_model`); the configured one is built by
:func:`debiascl.compose.build_model`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from debiascl.errors import ConfigError
from debiascl.models.clip import SimCLRModel, TwoTowerModel
from debiascl.models.encoders import build_image_encoder
from debiascl.models.heads import projection_head
from debiascl.models.text import BagOfWordsTextEncoder, MiniLMTextEncoder

log = logging.getLogger(__name__)


def build_text_encoder(
    name: str,
    *,
    trainable: bool = False,
    max_length: int = 64,
    train_layers: int | None = None,
    pooling: str = "mean",
    bag_dim: int = 256,
    corpus: Sequence[str] | None = None,
) -> nn.Module:
    """The text tower ``name`` (minilm, bag_of_words or hf:<source>).

    ``bag_dim`` is the bag-of-words embedding width and ``corpus`` its vocabulary source.
    """
    if name == "minilm":
        return MiniLMTextEncoder(trainable, max_length, train_layers)
    if name == "bag_of_words":
        return BagOfWordsTextEncoder(corpus or [], dim=bag_dim)
    if name.startswith("hf:"):
        from debiascl.models.hf_text import HFTextEncoder

        return HFTextEncoder(name.removeprefix("hf:"), pooling, max_length, trainable, train_layers)
    raise ConfigError(
        f"model.text_encoder={name!r} needs model.encoder=open_clip:<architecture>"
        if name == "open_clip"
        else f"unknown text encoder {name!r}; choose minilm, bag_of_words, hf:<folder> or open_clip"
    )


def _build_open_clip(
    encoder: str,
    mode: str,
    text_encoder: str,
    weights: str | None,
    proj_hidden_dim: int,
    embed_dim: int,
) -> nn.Module:
    from debiascl.models.open_clip_model import build_open_clip_towers

    arch = encoder.removeprefix("open_clip:")
    if mode == "image_text" and text_encoder != "open_clip":
        raise ConfigError(
            f"model.encoder={encoder} is a whole CLIP model: set model.text_encoder=open_clip"
        )
    image, text, scale = build_open_clip_towers(arch, weights)
    if mode == "image_image":
        head = projection_head(image.feature_dim, proj_hidden_dim, embed_dim)
        return SimCLRModel(image, head)
    if embed_dim != image.feature_dim:
        raise ConfigError(
            f"{encoder} embeds into {image.feature_dim} dimensions: set "
            f"model.embed_dim={image.feature_dim}"
        )
    model = TwoTowerModel(image, nn.Identity(), text, nn.Identity())
    # The loss owns the temperature (loss.temperature); the checkpoint's value is kept for reference
    # (set loss.temperature = 1 / checkpoint_logit_scale to start where the checkpoint ended).
    model.checkpoint_logit_scale = scale
    log.info(
        "%s: the checkpoint's logit scale is %.4g; loss.temperature=%.4g starts from it",
        encoder,
        scale,
        1.0 / scale,
    )
    return model


def create_model(
    mode: str,
    channels: int,
    *,
    encoder: str = "small_cnn",
    width: int = 16,
    small_image_stem: bool = True,
    pretrained: bool = False,
    weights: str | None = None,
    proj_hidden_dim: int = 256,
    embed_dim: int = 128,
    text_encoder: str = "minilm",
    text_trainable: bool = False,
    text_max_length: int = 64,
    text_train_layers: int | None = None,
    text_pooling: str = "mean",
    corpus: Sequence[str] | None = None,
) -> nn.Module:
    """A :class:`SimCLRModel` (``mode="image_image"``) or :class:`TwoTowerModel` (image_text).

    Args:
        mode: ``image_image`` or ``image_text``.
        channels: image channels the encoder receives (1 or 3).
        encoder: image tower (``small_cnn``, ``resnet18``, ``timm:<name>``, ``open_clip:<arch>``
            for a whole CLIP model, ...); ``width``, ``small_image_stem``, ``pretrained`` and
            ``weights`` configure it.
        proj_hidden_dim, embed_dim: projection head widths (embeddings have ``embed_dim``).
        text_*: the text tower (see :func:`build_text_encoder`); ``corpus``: bag-of-words texts.

    Raises:
        ConfigError: an unknown encoder, or an open_clip model with mismatched settings.
    """
    if encoder.startswith("open_clip:"):
        return _build_open_clip(encoder, mode, text_encoder, weights, proj_hidden_dim, embed_dim)
    image = build_image_encoder(encoder, channels, width, small_image_stem, pretrained, weights)
    head = projection_head(image.feature_dim, proj_hidden_dim, embed_dim)
    if mode == "image_image":
        return SimCLRModel(image, head)
    text = build_text_encoder(
        text_encoder,
        trainable=text_trainable,
        max_length=text_max_length,
        train_layers=text_train_layers,
        pooling=text_pooling,
        bag_dim=proj_hidden_dim,
        corpus=corpus,
    )
    text_head = projection_head(text.feature_dim, proj_hidden_dim, embed_dim)
    return TwoTowerModel(image, head, text, text_head)
