"""Whole CLIP models from open_clip (``pip install 'debiascl[open_clip]'``).

``model.encoder: open_clip:<architecture>`` with ``model.weights: <checkpoint>`` (any file
``open_clip.load_checkpoint`` reads) and ``model.text_encoder: open_clip`` builds the open_clip
model and splits it into debiascl's two-tower layout so that every loss, false-negative detector
and fairness term applies unchanged:

* image tower: :class:`~debiascl.models.pretrained.InputAdapter` (open_clip's preprocessing mean,
  std and input size) followed by ``clip.visual`` (which ends in CLIP's image projection);
* text tower: open_clip's own tokenizer followed by the model's ``encode_text`` (text projection
  included);
* the logit scale belongs to the loss (``loss.temperature``, ``loss.learn_temperature``); the
  checkpoint's learned value is kept as ``model.checkpoint_logit_scale`` (set
  ``loss.temperature`` to its inverse to start from it) and export writes the run's value back.

No projection heads are added in ``image_text`` mode: both towers already end in CLIP's shared
embedding space (Radford et al., 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from debiascl.errors import ConfigError
from debiascl.models.pretrained import InputAdapter


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as err:
        raise ConfigError(
            "encoder 'open_clip:...' needs open_clip: pip install 'debiascl[open_clip]'"
        ) from err
    return open_clip


class OpenCLIPImageTower(nn.Module):
    """debiascl-normalised images (b, C, H, W) -> CLIP image embeddings (b, embed_dim)."""

    def __init__(self, visual: nn.Module, adapter: InputAdapter, feature_dim: int) -> None:
        super().__init__()
        self.adapter = adapter
        self.visual = visual
        self.feature_dim = int(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(self.adapter(x))


class OpenCLIPTextTower(nn.Module):
    """List of strings -> CLIP text embeddings (b, embed_dim) with open_clip's tokenizer.

    ``clip`` is the open_clip model with ``visual`` and ``logit_scale`` taken out (they live in the
    image tower and the two-tower model).
    """

    def __init__(self, clip: nn.Module, tokenizer: Any, feature_dim: int) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.feature_dim = int(feature_dim)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        tokens = self.tokenizer(list(texts)).to(device)
        return self.clip.encode_text(tokens)


def create_open_clip(arch: str, weights: str | None) -> nn.Module:
    """open_clip model ``arch`` with a local checkpoint loaded.

    ``arch`` is a built-in or added (``open_clip.add_model_config``) architecture name, or
    ``local-dir:<folder>`` (``open_clip_config.json`` + weights, as ``debiascl export --to
    open_clip`` writes them), which brings its own weights. ``weights``, when given, is loaded
    on top with ``open_clip.load_checkpoint``.

    Raises:
        ConfigError: unknown architecture, missing folder/file, or weights that do not fit.
    """
    open_clip = import_open_clip()
    if arch.startswith("local-dir:"):
        folder = Path(arch.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ConfigError(
                f"open_clip folder {str(folder)!r} has no open_clip_config.json; write it with "
                "`debiascl export --to open_clip` or open_clip's save_for_hf"
            )
        arch = f"local-dir:{folder}"
    elif arch.startswith("hf-hub:"):
        raise ConfigError(
            f"open_clip:{arch} would download; save the model to a folder and use "
            "model.encoder=open_clip:local-dir:<folder>"
        )
    elif arch not in open_clip.list_models():
        raise ConfigError(
            f"open_clip has no architecture {arch!r}; register its JSON config with "
            "open_clip.add_model_config(dir), use open_clip:local-dir:<folder>, or choose one of "
            "open_clip.list_models()"
        )
    try:
        clip = open_clip.create_model(arch, pretrained=None, device="cpu")
    except (RuntimeError, KeyError, OSError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"open_clip could not build {arch!r}: {detail}") from None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"open_clip checkpoint {weights!r} does not exist")
        try:
            open_clip.load_checkpoint(clip, str(path))
        except (RuntimeError, KeyError, OSError, ValueError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ConfigError(
                f"open_clip checkpoint {weights!r} does not fit architecture {arch!r}: {detail}"
            ) from None
    return clip


def split_open_clip(
    clip: nn.Module, arch: str
) -> tuple[OpenCLIPImageTower, OpenCLIPTextTower, float]:
    """(image tower, text tower, learned logit scale exp(log s)) from an open_clip model."""
    open_clip = import_open_clip()
    pre = open_clip.get_model_preprocess_cfg(clip)
    size = pre.get("size", getattr(clip.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    embed_dim = int(clip.text_projection.shape[1] if _has_proj(clip) else clip.visual.output_dim)
    visual = clip.visual
    adapter = InputAdapter(pre.get("mean"), pre.get("std"), 3, size)
    image = OpenCLIPImageTower(visual, adapter, embed_dim)
    scale = math.exp(float(clip.logit_scale.detach().reshape(-1)[0]))
    clip.visual = None
    del clip.logit_scale
    if getattr(clip, "logit_bias", None) is not None:
        del clip.logit_bias
        clip.logit_bias = None
    text = OpenCLIPTextTower(clip, open_clip.get_tokenizer(arch), embed_dim)
    return image, text, scale


def _has_proj(clip: nn.Module) -> bool:
    proj = getattr(clip, "text_projection", None)
    return isinstance(proj, torch.Tensor) and proj.dim() == 2


def build_open_clip_towers(
    arch: str, weights: str | None
) -> tuple[OpenCLIPImageTower, OpenCLIPTextTower, float]:
    """Create ``arch``, load ``weights`` and split it (see :func:`split_open_clip`)."""
    return split_open_clip(create_open_clip(arch, weights), arch)


def open_clip_state_dict(model: nn.Module, logit_scale: float) -> dict[str, torch.Tensor]:
    """The open_clip state dict of a debiascl two-tower model built from open_clip, with the
    run's logit scale (1 / temperature; open_clip stores its log)."""
    image, text = model.encoder, model.text_encoder
    if not isinstance(image, OpenCLIPImageTower) or not isinstance(text, OpenCLIPTextTower):
        raise ConfigError("export --to open_clip needs a run trained with encoder=open_clip:<arch>")
    state = {k: v for k, v in text.clip.state_dict().items() if not k.startswith("visual.")}
    state.update({f"visual.{k}": v for k, v in image.visual.state_dict().items()})
    state["logit_scale"] = torch.tensor(math.log(logit_scale), dtype=torch.float32)
    return {k: v.detach().contiguous().clone() for k, v in state.items()}
