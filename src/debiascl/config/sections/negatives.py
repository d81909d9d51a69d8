"""The ``negatives`` section: the false-negative detector and its settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from debiascl.config.sections.base import Section


class NegativesConfig(Section):
    """False-negative detector (registry ``debiascl.registry.DETECTORS``)."""

    name: str = Field("none", description="none | fnc | glofnd | single | oracle")
    alpha: float = Field(0.05, gt=0, lt=1, description="target false-negative fraction")
    start_epoch: int = Field(0, ge=0, description="first epoch whose masks remove negatives")
    update_start_epoch: int | None = Field(
        None, ge=0, description="first epoch that updates thresholds (default start_epoch)"
    )
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(0.05, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    init: Literal["one", "batch_quantile"] = Field(
        "one", description="lambda at 1 (filters nothing) or the batch quantile on first visit"
    )
    moment_init: Literal["zero", "binomial"] = Field(
        "zero",
        description="GloFND Adam moments at the batch-quantile init: zero (bias-corrected; the "
        "next step moves lambda by a full lr) or binomial (m 0, v alpha(1-alpha)/n, no bias "
        "correction; steps start small)",
    )
    reset_on_resume: bool = Field(False, description="reset thresholds when loading a checkpoint")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon of the per-sample threshold update")
    table_placement: Literal["device", "cpu"] = Field(
        "device", description="where threshold tables live (cpu for very large id spaces)"
    )
    table_sharding: Literal["replicated", "sharded"] = Field(
        "replicated",
        description="sharded: each rank stores only N / world_size rows of the threshold tables "
        "and fetches the others by collectives (for 10**8-10**9 ids over many GPUs)",
    )
