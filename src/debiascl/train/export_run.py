"""Read a run directory's trained model and export it (``debiascl export``).

The run config and checkpoint are read here (the training side); the format writers in
:mod:`debiascl.models.export` take a plain model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from debiascl.checkpoint import OLD_MODEL_KEY
from debiascl.compose import build_model
from debiascl.config import load_run_config
from debiascl.errors import CheckpointError, ConfigError
from debiascl.models.export import (
    FORMATS,
    _heads,
    _save_safetensors,
    export_hf,
    export_open_clip,
    export_timm,
    run_logit_scale,
)
from debiascl.train import checkpoint as ckpt


def load_run(run_dir: Path, checkpoint: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(run config, checkpoint state) of a run directory's newest (or given) checkpoint."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_run_config(config_path, ["checkpoint.resume=null"])  # older spellings migrated
    path = ckpt.resolve_resume(checkpoint or "latest", Path(run_dir))
    return cfg, ckpt.load_checkpoint(path)


def load_trained_model(
    run_dir: Path, checkpoint: str | None = None
) -> tuple[Any, dict[str, Any], nn.Module]:
    """(config, checkpoint state, model with the trained weights in eval mode) of a run."""
    cfg, state = load_run(Path(run_dir), checkpoint)
    # bag_of_words: a stand-in vocabulary of the saved size (its words are not exported)
    texts = None
    if cfg.model.text_encoder == "bag_of_words" and "model" in state:
        weight = state["model"].get("text_encoder.embedding.weight")
        texts = [f"w{i}" for i in range(int(weight.shape[0]) - 1)] if weight is not None else None
    model = build_model(cfg.model, cfg.data.mode, cfg.data.channels, corpus=texts)
    # a checkpoint from before the loss owned the temperature holds it in the model's state
    model.load_state_dict({k: v for k, v in state["model"].items() if k != OLD_MODEL_KEY})
    return cfg, state, model.eval()


def export_run(run_dir: Path, to: str, out: Path, checkpoint: str | None = None) -> Path:
    """Write the trained tower(s) of ``run_dir`` to ``out`` in format ``to`` (see
    :mod:`debiascl.models.export`).

    Raises:
        ConfigError: unknown format, a model without the tower the format needs, or ``out``
            a file or not writable (checked before the model is loaded).
        CheckpointError: not a run directory, or no readable checkpoint.
    """
    if to not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {to!r}")
    out = Path(out)
    from debiascl.compose.run_eval import ensure_writable_dir

    ensure_writable_dir(out, "pass -o a writable folder (it is created if missing)")
    cfg, state, model = load_trained_model(Path(run_dir), checkpoint)
    if to == "timm":
        export_timm(model, out, cfg.data.image_size)
    elif to == "hf":
        export_hf(model, out)
    else:
        if not cfg.model.encoder.startswith("open_clip:"):
            raise ConfigError("export --to open_clip needs a run with encoder=open_clip:<arch>")
        arch = cfg.model.encoder.removeprefix("open_clip:")
        export_open_clip(model, out, arch, run_logit_scale(cfg, state))
    heads = _heads(model)
    if heads:
        _save_safetensors(heads, out / "debiascl_heads.safetensors")
    return out
