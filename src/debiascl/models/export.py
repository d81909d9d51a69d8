"""Export a trained tower so that its own library loads it natively (``debiascl export``).

* ``timm``: the image backbone as ``model.safetensors`` + timm's ``config.json``; load with
  ``timm.create_model("local-dir:DIR")`` (features, ``num_classes=0``). Works for ``timm:<name>``
  encoders and torchvision ResNets with the standard stem (same parameter names as timm's).
* ``hf``: the Hugging Face text tower with ``save_pretrained`` (``model.safetensors``,
  ``config.json``, tokenizer files) plus ``debiascl_text.json`` (pooling, max_length); load with
  ``transformers.AutoModel.from_pretrained(DIR)``.
* ``open_clip``: the whole CLIP model (both towers, the run's logit scale) as
  ``open_clip_model.safetensors`` + ``open_clip_config.json``; load with
  ``open_clip.create_model("local-dir:DIR")``.

The run directory is read by :mod:`debiascl.train.export_run`. The exported weights are the
backbone/tower only: debiascl's projection heads (used for the contrastive loss on non-CLIP
towers) are written separately to ``debiascl_heads.safetensors``.
The preprocessing recorded in the configs is the one the tower consumes (mean/std on [0, 1]
pixels), so the library's own transforms reproduce debiascl's embeddings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from debiascl.errors import ConfigError

FORMATS = ("timm", "hf", "open_clip")


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError as err:
        raise ConfigError("export needs safetensors: pip install 'debiascl[timm]'") from err
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def run_logit_scale(cfg: Any, state: dict[str, Any]) -> float:
    """The logit scale 1/t the run ended with (learned scale from the objective, else 1/t)."""
    objective = state.get("objective") or {}
    for key, value in objective.items() if isinstance(objective, dict) else []:
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            continue
        if key.endswith("scale.log_scale"):  # learned: log(1/t)
            return math.exp(float(value))
        if key.endswith("scale.fixed"):  # fixed: 1/t
            return float(value)
    return 1.0 / float(cfg.loss.temperature)


def _image_net(encoder: nn.Module) -> tuple[nn.Module, str, list[float], list[float], int]:
    """(net, timm architecture, mean, std, in_chans) of an exportable image encoder."""
    from debiascl.models.encoders import _TimmEncoder
    from debiascl.models.pretrained import DEBIASCL_MEAN, DEBIASCL_STD, PretrainedImageEncoder

    if isinstance(encoder, PretrainedImageEncoder):
        net, adapter = encoder.net, encoder.adapter
        mean, std = adapter.mean.flatten().tolist(), adapter.std.flatten().tolist()
        chans = adapter.channels
    elif isinstance(encoder, (_TimmEncoder, torchvision.models.ResNet)):
        net = encoder.net if isinstance(encoder, _TimmEncoder) else encoder
        chans = _in_chans(net)  # trained from scratch on debiascl's normalisation
        mean, std = [DEBIASCL_MEAN] * chans, [DEBIASCL_STD] * chans
    else:
        raise ConfigError(
            f"export --to timm needs a timm:<name> or torchvision ResNet encoder, not "
            f"{type(encoder).__name__}"
        )
    if hasattr(net, "pretrained_cfg") and getattr(net, "pretrained_cfg", None) is not None:
        arch = net.pretrained_cfg.get("architecture") or type(net).__name__
    elif type(net).__module__.startswith("torchvision") and isinstance(net.conv1, nn.Conv2d):
        if net.conv1.kernel_size != (7, 7) or isinstance(net.maxpool, nn.Identity):
            raise ConfigError(
                "export --to timm supports torchvision ResNets with the standard stem"
            )
        depth = sum(len(getattr(net, f"layer{i}")) for i in range(1, 5))
        bottleneck = type(net.layer1[0]).__name__ == "Bottleneck"
        arch = {(8, False): "resnet18", (16, False): "resnet34", (16, True): "resnet50"}[
            (depth, bottleneck)
        ]
    else:
        raise ConfigError(
            f"export --to timm supports timm:<name> and torchvision ResNet encoders, not "
            f"{type(net).__name__} (its weights are in the run's checkpoint under encoder.net.)"
        )
    return net, arch, mean, std, chans


def _in_chans(net: nn.Module) -> int:
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return 3


def export_timm(model: nn.Module, out: Path, image_size: int) -> Path:
    net, arch, mean, std, chans = _image_net(model.encoder)
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(net.state_dict(), out / "model.safetensors")
    config = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": int(model.encoder.feature_dim),
        "model_args": {"in_chans": chans},
        "pretrained_cfg": {
            "input_size": [chans, image_size, image_size],
            "mean": mean,
            "std": std,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "num_classes": 0,
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def export_hf(model: nn.Module, out: Path) -> Path:
    from debiascl.models.hf_text import HFTextEncoder

    text = getattr(model, "text_encoder", None)
    if not isinstance(text, HFTextEncoder):
        raise ConfigError(
            "export --to hf needs a run with a Hugging Face text tower (minilm or hf:<folder>)"
        )
    out.mkdir(parents=True, exist_ok=True)
    text.model.save_pretrained(str(out))
    text.tokenizer.save_pretrained(str(out))
    meta = {"pooling": text.pooling, "max_length": text.max_length, "source": text.source}
    (out / "debiascl_text.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def export_open_clip(model: nn.Module, out: Path, arch: str, logit_scale: float) -> Path:
    from debiascl.models.open_clip_model import import_open_clip, open_clip_state_dict

    open_clip = import_open_clip()
    state = open_clip_state_dict(model, logit_scale)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ConfigError(f"open_clip has no config for {arch!r}; register it before exporting")
    adapter = model.encoder.adapter
    preprocess = {"mean": adapter.mean.flatten().tolist(), "std": adapter.std.flatten().tolist()}
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(state, out / "open_clip_model.safetensors")
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def _heads(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name in ("head", "text_head"):
        head = getattr(model, name, None)
        if head is not None:
            out.update({f"{name}.{k}": v for k, v in head.state_dict().items()})
    return out
