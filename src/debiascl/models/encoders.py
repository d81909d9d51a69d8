"""Image encoders: a small CNN for CPU runs, torchvision ResNets, any timm model.

Every encoder maps a float batch (b, C, H, W) to features (b, F) and exposes ``feature_dim``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from debiascl.errors import ConfigError


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks (BN + ReLU, stride 2 from the second), global average pooling.

    With ``width=16`` it has about 100k parameters and trains a SimCLR step on 28x28 images at
    batch 256 in well under a second on two CPU cores (DESIGN.md section 6).
    """

    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, w in enumerate(widths):
            layers += [
                nn.Conv2d(prev, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            prev = w
        self.body = nn.Sequential(*layers)
        self.feature_dim = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def _torchvision_resnet(
    name: str, in_channels: int, small_stem: bool, pretrained: bool
) -> nn.Module:
    weights = "DEFAULT" if pretrained else None
    net = getattr(torchvision.models, name)(weights=weights)
    if small_stem:
        # CIFAR-style stem for small images: 3x3 stride-1 conv, no max-pool (SimCLR appendix B.9).
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class _TimmEncoder(nn.Module):
    def __init__(self, name: str, in_channels: int, pretrained: bool) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "encoder 'timm:...' needs timm: pip install 'debiascl[timm]'"
            ) from err
        try:
            self.net = timm.create_model(
                name, pretrained=pretrained, num_classes=0, in_chans=in_channels
            )
        except RuntimeError as err:
            raise ConfigError(f"timm could not build {name!r}: {err}") from None
        self.feature_dim = self.net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_image_encoder(
    name: str,
    in_channels: int = 1,
    width: int = 16,
    small_image_stem: bool = True,
    pretrained: bool = False,
    weights: str | None = None,
) -> nn.Module:
    """``small_cnn``, ``resnet18|34|50``, ``timm:<model name>`` or ``efficientnet_lite0``.

    With ``weights`` (a local state-dict file) or ``pretrained``, torchvision/timm towers keep
    their standard RGB stem and take debiascl-normalised input through an input adapter
    (:mod:`debiascl.models.pretrained`); ``efficientnet_lite0`` always does.
    """
    from debiascl.models import pretrained as pt

    if name == "efficientnet_lite0":
        return pt.efficientnet_lite0_encoder(weights, pretrained)
    if weights is not None and name == "small_cnn":
        raise ConfigError("model.weights needs a resnet, timm:<name> or efficientnet_lite0 encoder")
    if name in ("resnet18", "resnet34", "resnet50"):
        if weights is not None or pretrained:
            return pt.torchvision_resnet_encoder(name, weights, pretrained)
        return _torchvision_resnet(name, in_channels, small_image_stem, pretrained)
    if name.startswith("timm:"):
        if weights is not None or pretrained:
            return pt.timm_encoder(name.removeprefix("timm:"), weights, pretrained)
        return _TimmEncoder(name.removeprefix("timm:"), in_channels, pretrained)
    if name == "small_cnn":
        return SmallCNN(in_channels, width)
    raise ConfigError(
        f"unknown encoder {name!r}; choose small_cnn, resnet18, resnet34, resnet50, timm:<name>, "
        "efficientnet_lite0 or open_clip:<architecture>"
    )
