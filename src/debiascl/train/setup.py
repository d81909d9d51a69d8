"""Process set-up: device, seeds, determinism, threads, mixed precision."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch

from debiascl.config.schema import TrainConfig
from debiascl.errors import ConfigError
from debiascl.seeding import seed_everything

__all__ = ["autocast", "autocast_dtype", "configure_torch", "seed_everything", "select_device"]


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local_rank)


def configure_torch(cfg: TrainConfig) -> None:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on this device (None = full precision).

    ``auto`` uses bfloat16 on CUDA devices that support it, float16 on older GPUs and full
    precision on CPU (CPU autocast is slower than fp32 on most processors).
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
