"""The ``model`` section: encoders and heads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from debiascl.config.sections.base import Section


class ModelConfig(Section):
    """Encoders and heads."""

    encoder: str = Field(
        "small_cnn",
        description="small_cnn | resnet18 | resnet34 | resnet50 | timm:<name> | efficientnet_lite0 "
        "| open_clip:<architecture> (a whole CLIP model: also set text_encoder=open_clip)",
    )
    small_image_stem: bool = True
    width: int = Field(16, ge=4, description="channel width of small_cnn")
    pretrained: bool = Field(
        False,
        description="ImageNet weights: efficientnet_lite0 from its package (offline); "
        "torchvision/timm from their hubs (downloads); pretrained towers get the input "
        "normalisation they expect",
    )
    weights: str | None = Field(
        None,
        description="local weights file of the image tower (timm or torchvision state dict, "
        ".pth/.pt/.safetensors) or of the whole open_clip model",
    )
    proj_hidden_dim: int = Field(256, ge=1)
    embed_dim: int = Field(128, ge=1)
    text_encoder: str = Field(
        "minilm",
        pattern=r"^(minilm|bag_of_words|open_clip|hf:.+)$",
        description="minilm | bag_of_words | hf:<local folder or hub id> (transformers encoder) | "
        "open_clip (the text tower of an open_clip:<arch> encoder)",
    )
    text_trainable: bool = False
    text_train_layers: int | None = Field(
        None, ge=1, description="with text_trainable: train only the last k layers (null: all)"
    )
    text_pooling: Literal["cls", "mean", "pooler"] = Field(
        "mean", description="hf: text towers: CLS token, masked mean, or the model's pooler"
    )
    text_max_length: int = Field(64, ge=1, description="text tokens after truncation")
