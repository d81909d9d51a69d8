"""Typed run configuration (pydantic), one section per part of the library.

Unknown keys are errors (``extra="forbid"``) and values are validated on load, so a typo in a YAML
file or a ``key=value`` override fails before any work starts. The data, model, loss and
negatives sections live in :mod:`debiascl.config.sections`; add fields with a one-line
description, named like the component argument they feed (see :mod:`debiascl.compose`). The
``loss`` and ``negatives`` sections keep a method's own settings under its registered name
(:mod:`debiascl.config.sections.methods`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from debiascl.config.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    NegativesConfig,
    Section,
)

#: Keys that moved: old dotted key -> what replaces it (the loader names it in its error).
MOVED_KEYS = {
    "model.logit_scale_init": "loss.temperature (= 1 / logit_scale_init; the loss owns its "
    "temperature)",
    "model.learn_logit_scale": "loss.learn_temperature",
    "model.max_logit_scale": "loss.max_logit_scale",
}

__all__ = [
    "MOVED_KEYS",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "FairnessAuditConfig",
    "FairnessConfig",
    "LossConfig",
    "ModelConfig",
    "NegativesConfig",
    "OptimConfig",
    "RunConfig",
    "Section",
    "TrainConfig",
]


class FairnessConfig(Section):
    """Fairness terms added to the contrastive loss (``debiascl.fairness.terms``, DESIGN 3.5).

    ``terms`` lists them by registered name with their own settings, e.g.
    ``[{name: fisher_gap, weight: 10}]``; an empty list trains without fairness terms. The keys
    below are shared by every term: which rows they see and how they are weighted.
    """

    terms: list[Any] = Field(
        default_factory=list,
        description="fairness terms by name (adversary, mean_gap, fisher_gap, conditional_gap) "
        "with their settings, e.g. [{name: fisher_gap, weight: 10}]",
    )
    attributes: list[str] = Field(
        default_factory=list, description="sensitive attributes the terms act on"
    )
    on: Literal["image", "text", "feature"] = Field(
        "image", description="rows the terms see: image or text embedding, or backbone feature"
    )
    normalize: bool = Field(
        True,
        description="the terms see the L2-normalised embedding (what the cosine contrastive loss "
        "and zero-shot use), so the encoder cannot hide the attribute in the norm",
    )
    balance: Literal["none", "label"] = Field(
        "none",
        description="'label': weight rows by P(a)/P(a|y) (from the training data's class labels) "
        "so the attribute is independent of the class in the weighted data",
    )
    view: Literal["augmented", "clean"] = Field(
        "augmented",
        description="'clean': the terms see the embedding of the un-augmented batch (evaluation "
        "transform, one extra image-tower forward in the encoder's graph), as the audit does",
    )

    @field_validator("terms", mode="before")
    @classmethod
    def _terms_by_registered_name(cls, value: object) -> object:
        if not isinstance(value, list):
            raise ValueError("must be a list of {name: ..., weight: ...} entries")
        from debiascl.fairness.terms import parse_term_settings

        return [parse_term_settings(e, f"fairness.terms[{i}]") for i, e in enumerate(value)]


class FairnessAuditConfig(Section):
    """Fairness audit of the trained embeddings (DESIGN 3.6, 4); runs when the data has
    sensitive attributes."""

    attributes: list[str] | None = Field(
        None, description="attributes to audit (default: data.attribute_columns)"
    )
    intersections: list[list[str]] = Field(
        default_factory=list, description="attribute combinations audited as intersections"
    )
    val_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="share of the training split held out (class-stratified) as the audit's "
        "validation split: decision thresholds come from it, never from the test split",
    )
    threshold_rule: Literal["youden", "f1", "prevalence"] = Field(
        "youden", description="how the validation split picks decision thresholds"
    )
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples for intervals (0: none)")
    ece_bins: int = Field(10, ge=2)
    few_shot_k: list[int] = Field(default_factory=lambda: [1, 4, 16])
    few_shot_seeds: int = Field(3, ge=1)
    leakage_probe: bool = True


class OptimConfig(Section):
    name: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2, description="global batch size (split over ranks)")
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    eval_every: int = Field(0, ge=0, description="evaluate every k epochs (0: only at the end)")
    log_every: int = Field(20, ge=1)
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="non-finite loss or gradient: stop (last good checkpoint kept) or skip the "
        "step",
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (tests)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    removed_pairs_sample: int = Field(
        512,
        ge=0,
        description="size of the uniform sample of detector-removed pairs saved to "
        "removed_pairs.csv for `debiascl explore` (0: off)",
    )
    micro_batch_size: int | None = Field(
        None,
        ge=0,
        description="gradient caching: encode each process's batch in micro-batches of this "
        "many samples (must divide it) and get the full batch's gradient with the memory of a "
        "micro-batch; batch norm sees micro-batch statistics; not with fairness.terms yet "
        "(null or 0: off)",
    )


class EvalConfig(Section):
    """Frozen-feature evaluation (``debiascl.eval``, DESIGN 4); the test split is only scored."""

    linear_probe_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [1.0, 0.1, 0.01],
        description="labelled fractions of the training split, class-balanced",
    )
    knn_k: int = Field(
        200,
        ge=1,
        description="neighbours of the weighted kNN monitor (Wu et al., CVPR 2018); capped at "
        "the smallest class's training count (with a warning), and the k used is reported as "
        "knn.k in the results",
    )
    knn_temperature: float = Field(0.1, gt=0)
    zero_shot: bool = True
    zero_shot_templates: list[str] = Field(
        default_factory=list,
        description="zero-shot prompt templates, '{}' marks the class name (put in as it is, "
        "e.g. 'a chest X-ray showing {}.'); empty: the caption templates for built-in datasets, "
        "else generic 'a photo of a {}.'-style prompts",
    )
    class_names: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="readable class names for zero-shot prompts and results: a list in label "
        "order, or a mapping label value -> name; empty: the data's names",
    )

    @field_validator("zero_shot_templates")
    @classmethod
    def _templates_have_a_slot(cls, value: list[str]) -> list[str]:
        for template in value:
            if "{}" not in template:
                raise ValueError(f"template {template!r} has no '{{}}' where the class name goes")
        return value

    @field_validator("class_names", mode="before")
    @classmethod
    def _label_values_as_text(cls, value: object) -> object:
        # YAML reads `{0: normal}` with int keys; label values are matched as text.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    retrieval: bool = True
    retrieval_ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 5, 10])
    references: bool = Field(True, description="also evaluate random-init encoder and raw pixels")
    probe_seeds: int = Field(1, ge=1, description="label draws for small label fractions")
    probe_C: float | None = Field(
        None, gt=0, description="fixed logistic-regression C; null: CV on the labelled subset"
    )
    probe_Cs: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0], description="C grid for the probe CV"
    )
    probe_cv_folds: int = Field(3, ge=2)
    fairness_audit: FairnessAuditConfig = Field(default_factory=FairnessAuditConfig)
    probe_cv_max_samples: int | None = Field(
        5000, ge=10, description="CV on a class-balanced subsample of at most this many rows"
    )
    probe_max_iter: int = Field(1000, ge=1, description="lbfgs iterations per probe fit")
    few_shot: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="images per class for few-shot probes (empty: off)"
    )
    few_shot_seeds: int = Field(3, ge=1)


class CheckpointConfig(Section):
    """Checkpoints and resume (``debiascl.train.checkpoint``, docs/reliability.md)."""

    every_epochs: int = Field(1, ge=1, description="checkpoint at the end of every k-th epoch")
    every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every k optimisation steps (mid-epoch)"
    )
    keep_last: int = Field(2, ge=1, description="periodic checkpoints kept (newest first)")
    keep_best: bool = Field(
        True, description="keep best.pt: the end-of-epoch checkpoint with the lowest train loss"
    )
    resume: str | None = Field(None, description="'latest', 'best' or a checkpoint path")
    overwrite: bool = Field(
        False,
        description="a fresh run (no resume) in a run directory holding checkpoints deletes them "
        "instead of refusing to start",
    )
    save_on_signal: bool = Field(
        True,
        description="on SIGTERM/SIGUSR1 save a checkpoint at the next step boundary and exit "
        "with 128+signal",
    )


class RunConfig(Section):
    """The whole run. ``name`` and ``output_dir`` decide the run directory."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
