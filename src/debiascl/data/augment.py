"""Batched image augmentation on the device with kornia.

The loader yields uint8 (b, C, H, W) batches; these modules turn them into normalised float views
on whatever device the batch is on, drawing independent random parameters for every sample in
one batched call (no per-sample Python loop). Random parameters come from torch's global RNG, so
``torch.manual_seed(s)`` before a call (or ``seed=s``) reproduces the views exactly.

Recipe (SimCLR, Chen et al. 2020, appendix A, adapted to small images): random resized crop
(scale 0.2-1 rather than 0.08-1, since 28x28 crops of 8% lose the object), horizontal flip,
colour jitter with p=0.8 (brightness/contrast 0.4; for RGB also saturation 0.4, hue 0.1), random
grayscale p=0.2 (RGB only), optional Gaussian blur p=0.5, then per-channel normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import kornia.augmentation as K
import torch
from torch import nn

from debiascl.errors import ConfigError, DataError

Strength = Literal["simclr", "light", "none"]
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's "L" conversion


def _check_strength(strength: str) -> None:
    if strength not in ("simclr", "light", "none"):
        raise ConfigError(f"augment must be simclr, light or none, got {strength!r}")


def _stats(values: float | Sequence[float], channels: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.repeat(channels)
    if t.numel() != channels:
        raise ConfigError(f"{name} needs 1 or {channels} values, got {t.numel()}")
    return t


class _ImageOp(nn.Module):
    """uint8 -> float in [0, 1] with the channel count fixed, and normalisation at the end."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        if image_size < 1:
            raise ConfigError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        std_t = _stats(std, channels, "std")
        if bool((std_t <= 0).any()):
            raise ConfigError("std must be positive")
        self.register_buffer("mean", _stats(mean, channels, "mean").view(1, -1, 1, 1), False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), False)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), False)

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (b, C, H, W) -> float32 (b, channels, H, W) in [0, 1]."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise DataError(f"expected a uint8 image batch (b, C, H, W), got {shape}")
        if images.dtype != torch.uint8:
            raise DataError(f"expected uint8 images (0..255), got {images.dtype}")
        x = images.float().div_(255.0)
        c = x.shape[1]
        if c == self.channels:
            return x
        if c == 1 and self.channels == 3:
            return x.expand(-1, 3, -1, -1).contiguous()
        if c == 3 and self.channels == 1:
            return (x * self.luma.to(x.device)).sum(dim=1, keepdim=True)
        raise DataError(f"cannot turn {c}-channel images into {self.channels} channels")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _resize(image_size: int) -> nn.Module:
    return K.Resize((image_size, image_size), antialias=True)


def augmentation_pipeline(
    image_size: int, channels: int, strength: Strength, blur: bool = False
) -> nn.Sequential:
    """The kornia ops of one random view (float in [0, 1] in, same range out, size image_size)."""
    _check_strength(strength)
    size = (image_size, image_size)
    rgb = channels == 3
    if strength == "none":
        return nn.Sequential(_resize(image_size))
    # "resample" crops by a batched affine warp instead of slicing sample by sample.
    if strength == "light":
        ops: list[nn.Module] = [
            K.RandomResizedCrop(size, scale=(0.6, 1.0), cropping_mode="resample"),
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(0.2, 0.2, 0.2 if rgb else 0.0, 0.0, p=0.5),
        ]
        return nn.Sequential(*ops)
    ops = [
        K.RandomResizedCrop(size, scale=(0.2, 1.0), cropping_mode="resample"),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(0.4, 0.4, 0.4 if rgb else 0.0, 0.1 if rgb else 0.0, p=0.8),
    ]
    if rgb:
        ops.append(K.RandomGrayscale(p=0.2))
    if blur:
        kernel = max(3, (image_size // 10) | 1)  # about 10% of the side, odd (SimCLR)
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5))
    return nn.Sequential(*ops)


class _RandomViews(_ImageOp):
    def _views(
        self, pipes: Sequence[nn.Module], images: torch.Tensor, seed: int | None
    ) -> list[torch.Tensor]:
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            # Augment in float32 even inside an autocast region (kornia warps, colour maths).
            with torch.autocast(images.device.type, enabled=False):
                x = self.to_unit(images)
                return [self.normalize(p(x).clamp_(0.0, 1.0)) for p in pipes]


class TwoViewAugment(_RandomViews):
    """Two independently augmented views of each image (SimCLR).

    Args:
        image_size: side of the output views.
        channels: output channels (1 or 3); 1-channel input is repeated, RGB input made grey.
        strength: ``simclr`` (default when None), ``light`` or ``none`` (resize only).
        blur: add random Gaussian blur (SimCLR uses it for ImageNet; off by default for 28x28).
        mean, std: normalisation per channel (scalar or one value per channel).

    Call with uint8 (b, C, H, W) -> (view1, view2), each float32 (b, channels, S, S).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        strength: Strength | None = "simclr",
        blur: bool = False,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__(image_size, channels, mean, std)
        self.strength: Strength = strength or "simclr"
        self.view1 = augmentation_pipeline(image_size, channels, self.strength, blur)
        self.view2 = augmentation_pipeline(image_size, channels, self.strength, blur)

    def forward(
        self, images: torch.Tensor, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v1, v2 = self._views([self.view1, self.view2], images, seed)
        return v1, v2


class SingleViewAugment(_RandomViews):
    """One augmented view per image, for image-text (CLIP-style) training.

    ``strength`` defaults to ``light`` (crop scale 0.6-1, flip, mild jitter) when None; the text
    is the other view, so heavy image augmentation is not needed. Call with uint8
    (b, C, H, W) -> float32 (b, channels, S, S).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        strength: Strength | None = "light",
        blur: bool = False,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__(image_size, channels, mean, std)
        self.strength: Strength = strength or "light"
        self.view = augmentation_pipeline(image_size, channels, self.strength, blur)

    def forward(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        return self._views([self.view], images, seed)[0]


class EvalTransform(_ImageOp):
    """Deterministic evaluation transform: resize to ``image_size`` and normalise.

    Call with uint8 (b, C, H, W) -> float32 (b, channels, S, S).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
    ) -> None:
        super().__init__(image_size, channels, mean, std)
        self.resize = _resize(image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            x = self.to_unit(images)
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = self.resize(x).clamp_(0.0, 1.0)
            return self.normalize(x)


def make_augment(
    mode: str,
    image_size: int,
    channels: int,
    strength: Strength | None = None,
    blur: bool = False,
) -> nn.Module:
    """The training augmentation: two views (``mode="image_image"``) or one (image_text).

    ``strength`` None means simclr for two views and light for one.
    """
    if mode == "image_image":
        return TwoViewAugment(image_size, channels, strength, blur=blur)
    return SingleViewAugment(image_size, channels, strength, blur=blur)


def __getattr__(name: str) -> object:
    # ImportError (not AttributeError) so that `from ... import` shows where it went
    if name == "build_augment":  # moved with the other config readers
        raise ImportError(
            "debiascl.data.augment.build_augment moved to debiascl.compose.build_augment (it "
            "reads the data config); make_augment here takes plain arguments"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
