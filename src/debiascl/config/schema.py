"""Typed run configuration (pydantic), one section per part of the library.

Unknown keys are errors (``extra="forbid"``) and values are validated on load, so a typo in a YAML
file or a ``key=value`` override fails before any work starts. Each method's issue owns its own
section; add fields there with a one-line description.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Keys that moved: old dotted key -> what replaces it (the loader names it in its error).
MOVED_KEYS = {
    "model.logit_scale_init": "loss.temperature (= 1 / logit_scale_init; the loss owns its "
    "temperature)",
    "model.learn_logit_scale": "loss.learn_temperature",
    "model.max_logit_scale": "loss.max_logit_scale",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """What to train and evaluate on (built in ``debiascl.data.build.build_data``)."""

    dataset: Literal["fashion_mnist", "digits", "manifest", "image_folder", "synthetic_attr"] = (
        "fashion_mnist"
    )
    mode: Literal["image_image", "image_text"] = "image_image"
    root: str | None = Field(
        None,
        description="data directory: Fashion-MNIST IDX folder (default the Debian location) or "
        "the image_folder root (with train/ and test/ subfolders, or class folders directly)",
    )
    manifest: str | None = Field(None, description="CSV/Parquet manifest for dataset=manifest")
    test_manifest: str | None = Field(None, description="test manifest (vocabularies from train)")
    image_column: str = "path"
    text_column: str = Field("text", description="caption/report column (image_text mode)")
    label_column: str | None = Field("label", description="class column; null if unlabelled")
    attribute_columns: list[str] = Field(default_factory=list)
    id_column: str | None = Field(None, description="sample-id column (default: row order)")
    train_size: int | None = Field(
        None, ge=1, description="use a seeded class-stratified subset of N training samples"
    )
    test_size: int | None = Field(
        None, ge=1, description="use a seeded class-stratified subset of N test samples"
    )
    subset_seed: int | None = Field(
        None,
        description="seed of the train_size/test_size subsets (default: the run seed for the "
        "training subset and 0 for the test subset, so every run is tested on the same samples)",
    )
    subsample_classes: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="controlled imbalance: training classes to keep only a fraction of (after "
        "train_size; the test split is untouched)",
    )
    subsample_fraction: float = Field(
        1.0, gt=0, le=1, description="share of each subsample_classes class kept (seeded)"
    )
    image_size: int = Field(28, ge=8)
    channels: Literal[1, 3] = 1
    caption_templates: Literal["default", "single", "skewed"] = "default"
    num_workers: int = Field(0, ge=0)
    augment: Literal["simclr", "light", "none"] | None = Field(
        None,
        description="augmentation strength (default simclr for image_image, light for image_text)",
    )
    blur: bool = Field(False, description="add random Gaussian blur to the simclr augmentation")
    on_bad_image: Literal["error", "skip"] = "error"
    # dataset=synthetic_attr (SYNTHETIC attribute on Fashion-MNIST, debiascl.data.synthetic_attr)
    synthetic_correlation: float = Field(
        0.9, ge=0, le=1, description="synthetic_attr: P(mark | even class) in the training split"
    )
    synthetic_test_correlation: float = Field(
        0.5,
        ge=0,
        le=1,
        description="synthetic_attr: the same for the test split (0.5: independent)",
    )
    synthetic_style: Literal["border", "tint"] = Field(
        "border", description="synthetic_attr: how the mark is drawn (bright frame or tint)"
    )
    high_bit_scaling: Literal["dtype", "minmax"] = Field(
        "dtype",
        description="how 16-bit images become 8-bit: divide by the type's range, or per-image "
        "min-max (for 12-bit values stored in 16 bits)",
    )


class ModelConfig(Section):
    """Encoders and heads."""

    encoder: str = Field(
        "small_cnn",
        description="small_cnn | resnet18 | resnet34 | resnet50 | timm:<name> | efficientnet_lite0 "
        "| open_clip:<architecture> (a whole CLIP model: also set text_encoder=open_clip)",
    )
    small_image_stem: bool = True
    width: int = Field(16, ge=4, description="channel width of small_cnn")
    pretrained: bool = Field(
        False,
        description="ImageNet weights: efficientnet_lite0 from its package (offline); "
        "torchvision/timm from their hubs (downloads); pretrained towers get the input "
        "normalisation they expect",
    )
    weights: str | None = Field(
        None,
        description="local weights file of the image tower (timm or torchvision state dict, "
        ".pth/.pt/.safetensors) or of the whole open_clip model",
    )
    proj_hidden_dim: int = Field(256, ge=1)
    embed_dim: int = Field(128, ge=1)
    text_encoder: str = Field(
        "minilm",
        pattern=r"^(minilm|bag_of_words|open_clip|hf:.+)$",
        description="minilm | bag_of_words | hf:<local folder or hub id> (transformers encoder) | "
        "open_clip (the text tower of an open_clip:<arch> encoder)",
    )
    text_trainable: bool = False
    text_train_layers: int | None = Field(
        None, ge=1, description="with text_trainable: train only the last k layers (null: all)"
    )
    text_pooling: Literal["cls", "mean", "pooler"] = Field(
        "mean", description="hf: text towers: CLS token, masked mean, or the model's pooler"
    )
    text_max_length: int = Field(64, ge=1, description="text tokens after truncation")


class LossConfig(Section):
    """Contrastive loss (registry ``debiascl.registry.LOSSES``)."""

    name: str = Field("infonce", description="infonce | sogclr | dcl | hcl | ssd")
    temperature: float = Field(
        0.2,
        gt=0,
        description="temperature t of the loss (logit scale 1/t); the initial value when "
        "learn_temperature. The loss is the one owner: evaluation uses the trained scale",
    )
    learn_temperature: bool = Field(
        False,
        description="learn log(1/t) as in CLIP (only losses that support it: infonce)",
    )
    max_logit_scale: float = Field(
        100.0, gt=0, description="cap on a learned 1/t, applied after each optimiser step"
    )
    # SogCLR (DESIGN 3.2)
    gamma: float = Field(0.9, gt=0, le=1)
    gamma_schedule: Literal["constant", "cosine"] = "constant"
    gamma_min: float = Field(0.2, gt=0, le=1)
    table_placement: Literal["device", "cpu"] = Field(
        "device", description="where SogCLR's u tables live (cpu for very large id spaces)"
    )
    # DCL / HCL / SSD (DESIGN 3.4)
    eta: float = Field(0.1, ge=0, lt=1, description="constant false-negative rate tau+")
    beta: float = Field(0.0, ge=0, description="HCL hardness (hcl, ssd; must be 0 for dcl)")
    eta_source: Literal["auto", "constant", "ssd_mlm", "corpus_lm", "class_frequency"] = Field(
        "auto",
        description="per-sample eta: auto = constant for dcl/hcl, ssd_mlm for ssd; corpus_lm = "
        "n-gram model fitted on the training texts; class_frequency = oracle n_c/n from labels",
    )
    ssd_a: float = Field(0.2, ge=0, lt=1, description="SSD eta = a * p_LM(text)^k: scale a")
    ssd_k: float = Field(0.35, gt=0, description="SSD exponent k")
    mlm_path: str | None = Field(None, description="local masked-LM folder for eta_source=ssd_mlm")
    mlm_batch_size: int = Field(32, ge=1, description="masked copies per MLM forward pass")
    mlm_max_length: int = Field(128, ge=3, description="MLM truncation length (tokens)")
    mlm_device: str = Field("auto", description="device for MLM scoring: auto | cpu | cuda[:i]")
    corpus_lm_order: int = Field(2, ge=1, le=5, description="n of the corpus n-gram model")
    eta_cache_dir: str | None = Field(
        None, description="cache of text log-probabilities (default: <output_dir>/eta_cache)"
    )
    eta_cache_readonly: bool = Field(
        False, description="never compute: a text missing from the eta cache is an error"
    )
    eta_directions: Literal["both", "image_to_text", "text_to_image"] = Field(
        "both",
        description="image_text: directions whose anchors get the eta correction (others: eta 0)",
    )
    directions: Literal["both", "image_to_text", "text_to_image"] = "both"


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


class FairnessConfig(Section):
    """Adversarial fairness (AdFair-CLIP, DESIGN 3.5)."""

    enabled: bool = False
    attributes: list[str] = Field(default_factory=list)
    weight: float = Field(1.0, ge=0, description="adversarial weight lambda_adv")
    method: Literal["reversal", "alternating"] = "reversal"
    objective: Literal["cross_entropy", "confusion"] = "confusion"
    on: Literal["image", "text", "feature"] = "image"
    normalize: bool = Field(
        True,
        description="the discriminator sees the L2-normalised embedding (what the cosine "
        "contrastive loss and zero-shot use), so the encoder cannot hide the attribute in the norm",
    )
    hidden_dim: int = Field(128, ge=1, description="discriminator MLP width")
    disc_layers: int = Field(
        2, ge=0, description="hidden layers of the discriminator MLP (0: a linear discriminator)"
    )
    disc_standardize: bool = Field(
        False,
        description="batch-standardise the discriminator's input, so the encoder cannot fool it "
        "by shrinking the attribute direction (a standardising probe would still read it)",
    )
    balance: Literal["none", "label"] = Field(
        "none",
        description="'label': weight the adversary's samples by P(a)/P(a|y) (from the training "
        "data's class labels) so the attribute is independent of the class in the weighted data; "
        "the discriminator then cannot predict the attribute from class information",
    )
    mean_gap_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the standardised group-mean-gap (linear MMD) penalty on the "
        "adversary's input, added to the adversarial term; with balance=label the class "
        "differences are not counted",
    )
    mean_gap_whiten: bool = Field(
        False,
        description="measure the group-mean gap in the metric of the within-group covariance "
        "(Fisher separation) instead of per-coordinate standardisation",
    )
    mean_gap_conditional: bool = Field(
        False,
        description="measure the group-mean gap within each class (needs class labels) instead "
        "of over the batch: zero only when no class keeps its own attribute direction",
    )
    mean_gap_momentum: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="decay per step of running estimates: with mean_gap_conditional, of the "
        "(class, group) sums pooled with each batch's; with mean_gap_whiten, of the within-group "
        "covariance used as the Fisher metric (0 = this batch only)",
    )
    mean_gap_shrinkage: float = Field(
        0.1,
        gt=0,
        le=1,
        description="with mean_gap_whiten: shrinkage of the within-group covariance towards "
        "tr(S)/D * I (small values whiten the low-variance directions; need a running estimate)",
    )
    adversary_view: Literal["augmented", "clean"] = Field(
        "augmented",
        description="what the adversary (and mean-gap penalty) sees: the embedding of the "
        "augmented training view, or 'clean': of the un-augmented batch (evaluation transform, "
        "one extra image-tower forward in the encoder's graph), i.e. what the audit's probes see",
    )
    refit_every_epochs: int = Field(
        0,
        ge=0,
        description="re-initialise the discriminator and fit it to the current clean embeddings "
        "of the whole training set every this many epochs (0: never), so it cannot lag the encoder",
    )
    refit_steps: int = Field(200, ge=1, description="Adam steps of each refit (minibatches of 256)")
    lr: float = Field(1e-3, gt=0, description="discriminator learning rate (own Adam)")
    disc_steps: int = Field(1, ge=1, description="discriminator steps per encoder step")
    warmup_epochs: float = Field(0, ge=0, description="epochs with adversarial weight 0")
    schedule: Literal["constant", "linear", "dann"] = Field(
        "constant", description="adversarial weight after warm-up"
    )
    ramp_epochs: float = Field(0, ge=0, description="epochs of the linear/dann weight ramp")
    # audit (DESIGN 3.6, 4)
    audit_attributes: list[str] | None = Field(
        None, description="attributes to audit (default: data.attribute_columns)"
    )
    intersections: list[list[str]] = Field(
        default_factory=list, description="attribute combinations audited as intersections"
    )
    audit_val_fraction: float = Field(
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


class EvalConfig(Section):
    """Frozen-feature evaluation (``debiascl.eval``, DESIGN 4); the test split is only scored."""

    linear_probe_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [1.0, 0.1, 0.01],
        description="labelled fractions of the training split, class-balanced",
    )
    knn_k: int = Field(200, ge=1)
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
