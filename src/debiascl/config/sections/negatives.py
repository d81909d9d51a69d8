"""The ``negatives`` section: the false-negative detector and its settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from debiascl.config.sections.base import Section


class NegativesConfig(Section):
    """False-negative detector (registry ``debiascl.registry.DETECTORS``)."""

    name: str = Field(
        "none",
        description="none | fnc | glofnd | single | oracle | text_sim | stable_glofnd | eta_glofnd",
    )
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
    start_rule: Literal["epoch", "converged"] = Field(
        "epoch",
        description="glofnd-type detectors: mask from start_epoch (epoch) or from the first epoch "
        ">= start_epoch after which the mean threshold moved <= start_tolerance (converged)",
    )
    start_tolerance: float = Field(
        0.01, gt=0, description="converged start rule: change of the mean threshold per epoch"
    )
    text_rule: Literal["fixed", "glofnd"] = Field(
        "fixed",
        description="text_sim: remove text cosine >= text_threshold (fixed) or above a learned "
        "per-anchor GloFND threshold over text cosines (glofnd)",
    )
    text_threshold: float = Field(
        0.95,
        gt=-1,
        le=1,
        description="text cosine counted as the same text (text_sim fixed rule, text diagnostics)",
    )
    text_encoder: Literal["minilm", "tfidf"] = Field(
        "minilm", description="frozen encoder of the text evidence (captions/reports)"
    )
    text_diagnostics: bool = Field(
        False,
        description="log per epoch the share of removed pairs whose texts agree (text_agreement) "
        "and of text-agreeing negatives removed (text_recall); needs texts",
    )
    reference: Literal["ema", "initial"] = Field(
        "ema", description="stable_glofnd: EMA copy of the model or the frozen initial model"
    )
    ema_decay: float = Field(0.999, ge=0, lt=1, description="stable_glofnd EMA decay per step")
    alpha_scale: float = Field(
        1.0, gt=0, description="eta_glofnd: alpha_i = clip(alpha_scale * eta_i, min, max)"
    )
    alpha_min: float = Field(0.01, gt=0, lt=1, description="eta_glofnd: lower clip of alpha_i")
    alpha_max: float = Field(0.5, gt=0, lt=1, description="eta_glofnd: upper clip of alpha_i")
    table_sharding: Literal["replicated", "sharded"] = Field(
        "replicated",
        description="sharded: each rank stores only N / world_size rows of the threshold tables "
        "and fetches the others by collectives (for 10**8-10**9 ids over many GPUs)",
    )
