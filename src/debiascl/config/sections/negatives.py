"""The ``negatives`` section: the false-negative detector, its shared settings and each
detector's own settings.

Section keys mean the same for every detector: the target fraction ``alpha``, when removal and
threshold updates start, where threshold tables live, and the frozen text evidence shared by
``text_sim`` and the text diagnostics. A detector's own settings sit under its name; every
detector with a learned threshold (glofnd, single, text_sim, stable_glofnd, eta_glofnd) takes the
threshold update rule (optimizer, lr, betas, eps, init) in its own subsection, e.g.
``negatives: {name: glofnd, glofnd: {lr: 0.05, beta1: 0.5, init: batch_quantile}}``.
"""

from __future__ import annotations

import inspect
from typing import ClassVar, Literal

from pydantic import Field

from debiascl.config.sections.methods import MethodSection, MethodSettings
from debiascl.registry import DETECTORS


class SingleSettings(MethodSettings):
    """``negatives.single``: the threshold update rule (``negatives.thresholds.ThresholdRule``)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(0.05, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, description="Adam epsilon of the threshold update")
    init: Literal["one", "batch_quantile"] = Field(
        "one", description="lambda at 1 (filters nothing) or the batch quantile on first visit"
    )


class TextSimSettings(SingleSettings):
    """``negatives.text_sim``: the rule over text cosines and its threshold update."""

    text_rule: Literal["fixed", "glofnd"] = Field(
        "fixed",
        description="remove text cosine >= negatives.text_threshold (fixed) or above a learned "
        "per-anchor GloFND threshold over text cosines (glofnd)",
    )
    moment_init: Literal["zero", "binomial"] = Field(
        "zero", description="Adam moments at the batch-quantile init (see negatives.glofnd)"
    )


class GloFNDSettings(SingleSettings):
    """``negatives.glofnd``: per-sample thresholds (Adam or SGD on the quantile loss)."""

    moment_init: Literal["zero", "binomial"] = Field(
        "zero",
        description="Adam moments at the batch-quantile init: zero (bias-corrected; the next "
        "step moves lambda by a full lr) or binomial (m 0, v alpha(1-alpha)/n, no bias "
        "correction; steps start small)",
    )
    reset_on_resume: bool = Field(False, description="reset thresholds when loading a checkpoint")


class StableGloFNDSettings(GloFNDSettings):
    """``negatives.stable_glofnd``: GloFND on a stable copy of the model."""

    reference: Literal["ema", "initial"] = Field(
        "ema", description="EMA copy of the model or the frozen initial model"
    )
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay per step")


class EtaGloFNDSettings(GloFNDSettings):
    """``negatives.eta_glofnd``: GloFND with a per-anchor alpha from the loss's eta."""

    alpha_scale: float = Field(1.0, gt=0, description="alpha_i = clip(alpha_scale * eta_i, ...)")
    alpha_min: float = Field(0.01, gt=0, lt=1, description="lower clip of alpha_i")
    alpha_max: float = Field(0.5, gt=0, lt=1, description="upper clip of alpha_i")


#: Settings the composition layer reads for a method itself (not constructor arguments).
COMPOSE_SETTINGS = {"stable_glofnd": frozenset({"reference", "ema_decay"})}


class NegativesConfig(MethodSection):
    """False-negative detector (registry ``debiascl.registry.DETECTORS``) and its settings."""

    KIND = "negatives"
    TYPED_SETTINGS: ClassVar[dict[str, type[MethodSettings]]] = {
        "none": MethodSettings,
        "fnc": MethodSettings,
        "oracle": MethodSettings,
        "single": SingleSettings,
        "glofnd": GloFNDSettings,
        "text_sim": TextSimSettings,
        "stable_glofnd": StableGloFNDSettings,
        "eta_glofnd": EtaGloFNDSettings,
    }
    #: ``text_diagnostics`` is a shared diagnostic: it logs the removals of any detector.
    ALWAYS_READ = frozenset({"name", "text_diagnostics"})
    READ_WITH = {  # noqa: RUF012  (a ClassVar of MethodSection)
        "text_encoder": "negatives.text_diagnostics=true",
        "text_threshold": "negatives.text_diagnostics=true",
    }

    @classmethod
    def keys_read_by(cls, name: str) -> frozenset[str] | None:
        """As :meth:`MethodSection.keys_read_by`; a detector that needs the frozen text table
        (a ``text_embeddings`` parameter without default) reads ``text_encoder``, which compose
        encodes it with (others get it only with ``start_rule=text_agreement``)."""
        read = super().keys_read_by(name)
        param = inspect.signature(DETECTORS.get(name)).parameters.get("text_embeddings")
        if read is None or param is None or param.default is not inspect.Parameter.empty:
            return read
        return read | {"text_encoder"}

    def keys_read(self) -> frozenset[str] | None:
        """The shared keys the selected detector reads; the text evidence (``text_encoder``,
        ``text_threshold``) also serves the text diagnostics and the text_agreement start rule."""
        read = self.keys_read_by(self.name)
        if read is None:
            return None
        extra: set[str] = set()
        if self.text_diagnostics:
            extra |= {"text_encoder", "text_threshold"}
        if "start_rule" in read and self.start_rule == "text_agreement":
            extra.add("text_encoder")
        return read | extra

    name: str = Field(
        "none",
        description="a registered detector: none | fnc | glofnd | single | oracle | text_sim | "
        "stable_glofnd | eta_glofnd",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="target false-negative fraction")
    start_epoch: int = Field(0, ge=0, description="first epoch whose masks remove negatives")
    update_start_epoch: int | None = Field(
        None, ge=0, description="first epoch that updates thresholds (default start_epoch)"
    )
    start_rule: Literal["epoch", "converged", "text_agreement"] = Field(
        "epoch",
        description="glofnd-type detectors: mask from start_epoch (epoch), or from the first "
        "epoch >= start_epoch after which the mean threshold moved <= start_tolerance "
        "(converged), or after which at least start_agreement of the pairs above the learned "
        "thresholds have agreeing texts (text_agreement: text cosine >= text_threshold under "
        "text_encoder; needs texts)",
    )
    start_tolerance: float = Field(
        0.01, gt=0, description="converged start rule: change of the mean threshold per epoch"
    )
    start_agreement: float = Field(
        0.5,
        gt=0,
        le=1,
        description="text_agreement start rule: share of the would-be-removed pairs whose texts "
        "agree that starts masking",
    )
    table_placement: Literal["device", "cpu"] = Field(
        "device", description="where threshold tables live (cpu for very large id spaces)"
    )
    table_sharding: Literal["replicated", "sharded"] = Field(
        "replicated",
        description="sharded: each rank stores only N / world_size rows of the threshold tables "
        "and fetches the others by collectives (for 10**8-10**9 ids over many GPUs)",
    )
    text_encoder: Literal["minilm", "tfidf"] = Field(
        "minilm",
        description="frozen encoder of the text evidence (captions/reports) of text_sim and the "
        "text diagnostics (one table serves both)",
    )
    text_threshold: float = Field(
        0.95,
        gt=-1,
        le=1,
        description="text cosine counted as the same text (text_sim's fixed rule, text "
        "diagnostics, the text_agreement start rule)",
    )
    text_diagnostics: bool = Field(
        False,
        description="log per epoch the share of removed pairs whose texts agree (text_agreement) "
        "and of text-agreeing negatives removed (text_recall); needs texts",
    )
