"""The regimes and methods of the false-negative regime study (``run.py``): config overrides.

A regime is a base config plus overrides (the data, hence the false-negative base rate, the
model and its initialisation); a method is a detector with one or more candidate settings, tuned
on validation by ``run.py``.
"""

from __future__ import annotations

HARD3 = "[2,4,6]"  # pullover, coat, shirt: the most confusable classes (FN base rate 1/3)
UPPER5 = "[0,2,3,4,6]"  # t-shirt, pullover, dress, coat, shirt (FN base rate 1/5)

COMMON = [
    "data.train_size=2000",
    "train.epochs=12",
    "eval.probe_seeds=1",
    "eval.linear_probe_fractions=[0.1]",
    "eval.references=false",
    "checkpoint.overwrite=true",
]
IT = ["fmnist_clip_glofnd"]  # bimodal SogCLR (t = 0.2), small CNN, frozen MiniLM captions
II = ["fmnist_simclr"]  # SimCLR: NT-Xent (t = 0.2), small CNN, SimCLR augmentation
IT_METRICS = ["zero_shot/accuracy", "linear_probe/10%/mean"]
II_METRICS = ["linear_probe/10%/mean", "knn/accuracy"]
#: SYNTHETIC colour x garment (debiascl.data.tinted): pullover, coat, shirt in red, green, blue
TINT9 = (
    "["
    + ",".join(f"{c} {g}" for c in ("red", "green", "blue") for g in ("pullover", "coat", "shirt"))
    + "]"
)
TINT = [*IT, "data.dataset=tinted_fashion_mnist", "data.channels=3", f"data.classes={TINT9}"]
#: pretrained initialisation: the ImageNet EfficientNet-Lite0 image tower (offline package,
#: debiascl[efficientnet]) with fresh projection heads, RGB at 32 px, fine-tuned at a lower lr;
#: its epochs are set per regime (a CPU budget: about 20 s an epoch per view at 32 px)
PRE = [
    "model.encoder=efficientnet_lite0",
    "model.pretrained=true",
    "data.image_size=32",
    "data.channels=3",
    "optim.lr=0.001",
]

#: regime -> (base config and overrides, reported metrics, label). Every metric is reported in
#: every cell; settings are chosen on validation by the mean of the regime's metrics.
REGIMES: dict[str, tuple[list[str], list[str], str]] = {
    "it_3": (
        [*IT, f"data.classes={HARD3}"],
        IT_METRICS,
        "image-text, 3 similar classes, 8 caption templates per class (near-identical reports)",
    ),
    "it_3_single": (
        [*IT, f"data.classes={HARD3}", "data.caption_templates=single"],
        IT_METRICS,
        "image-text, 3 similar classes, one caption per class (identical reports)",
    ),
    "it_3_dominant": (
        [
            *IT,
            f"data.classes={HARD3}",
            "data.train_size=3000",
            "data.subsample_classes=[1,2]",
            "data.subsample_fraction=0.333",
        ],
        IT_METRICS,
        "image-text, 3 similar classes, one class 60% of training (like 'no finding')",
    ),
    "it_10": ([*IT], IT_METRICS, "image-text, 10 classes, 8 caption templates per class"),
    "it_tint": (
        [*TINT, "data.caption_templates=single"],
        IT_METRICS,
        "image-text, SYNTHETIC colour x garment (9 classes), one caption per class: identical "
        "reports among near-miss reports (same colour, other garment)",
    ),
    "it_tint_tpl": (
        [*TINT],
        IT_METRICS,
        "image-text, SYNTHETIC colour x garment (9 classes), 8 caption templates per class: "
        "near-identical reports among near-miss reports",
    ),
    "it_tint_tpl_start0": (
        [*TINT],
        IT_METRICS,
        "it_tint_tpl with masking from the first epoch (start epoch 0 instead of 2)",
    ),
    "it_tint_tpl_pre": (
        [*TINT, *PRE, "train.epochs=8"],
        IT_METRICS,
        "it_tint_tpl fine-tuned from a pretrained image tower: ImageNet EfficientNet-Lite0 "
        "(32 px, 8 epochs, lr 1e-3) instead of the small CNN from scratch",
    ),
    "it_ssd_skewed": (
        ["fmnist_ssd_corpus", "data.train_size=5000", "data.test_size=null", "train.epochs=6"],
        IT_METRICS,
        "image-text, SSD loss (eta from a caption n-gram model), 10 classes whose caption "
        "diversity differs (one caption for class 0 ... 16 for class 9): per-sample text "
        "frequencies vary, the setting eta_glofnd is for",
    ),
    "ii_3": ([*II, f"data.classes={HARD3}"], II_METRICS, "image-image, 3 similar classes"),
    "ii_3_pre": (
        [*II, f"data.classes={HARD3}", *PRE, "train.epochs=4"],
        II_METRICS,
        "ii_3 fine-tuned from a pretrained encoder: ImageNet EfficientNet-Lite0 (32 px, "
        "4 epochs, lr 1e-3) instead of the small CNN from scratch",
    ),
    "ii_5": ([*II, f"data.classes={UPPER5}"], II_METRICS, "image-image, 5 upper-body garments"),
    "ii_10": ([*II], II_METRICS, "image-image, 10 classes"),
}

START = ["negatives.start_epoch=2"]
#: every arm first resets the base config's detector settings (fmnist_clip_glofnd carries a
#: glofnd block and start keys that other detectors do not read and would refuse)
RESET = [
    "negatives.glofnd=null",
    "negatives.alpha=null",
    "negatives.start_epoch=null",
    "negatives.update_start_epoch=null",
]
#: method -> candidate settings (label -> overrides); several candidates are tuned on validation
METHODS: dict[str, dict[str, list[str]]] = {
    "none": {"": ["negatives.name=none"]},
    "oracle": {"": ["negatives.name=oracle", *START]},
    "fnc": {f"a{a}": ["negatives.name=fnc", f"negatives.alpha={a}", *START] for a in (0.05, 0.2)},
    "glofnd": {
        f"a{a}": [
            "negatives.name=glofnd",
            f"negatives.alpha={a}",
            *START,
            "negatives.update_start_epoch=1",
            "negatives.glofnd.init=batch_quantile",
            "negatives.glofnd.moment_init=binomial",
            "negatives.glofnd.beta1=0.5",
        ]
        for a in (0.05, 0.2)
    },
    "stable_glofnd": {
        f"a{a}": [
            "negatives.name=stable_glofnd",
            f"negatives.alpha={a}",
            *START,
            "negatives.update_start_epoch=1",
            "negatives.stable_glofnd.reference=initial",
            "negatives.stable_glofnd.init=batch_quantile",
            "negatives.stable_glofnd.moment_init=binomial",
            "negatives.stable_glofnd.beta1=0.5",
        ]
        for a in (0.05, 0.2)
    },
    #: GloFND with a per-anchor alpha_i = clip(alpha_scale * eta_i, 0.01, 0.5) from SSD's eta
    #: (needs the SSD loss, which supplies eta)
    "eta_glofnd": {
        f"s{s}": [
            "negatives.name=eta_glofnd",
            *START,
            "negatives.update_start_epoch=1",
            f"negatives.eta_glofnd.alpha_scale={s}",
            "negatives.eta_glofnd.init=batch_quantile",
            "negatives.eta_glofnd.moment_init=binomial",
            "negatives.eta_glofnd.beta1=0.5",
        ]
        for s in (0.5, 1.0)
    },
    #: GloFND with the start rule that needs no start epoch: masking begins once at least half
    #: (start_agreement 0.5) of the pairs above the learned thresholds have agreeing texts
    #: (MiniLM cosine >= 0.8); thresholds learn from epoch 0
    "glofnd_agree": {
        f"a{a}": [
            "negatives.name=glofnd",
            f"negatives.alpha={a}",
            "negatives.start_epoch=0",
            "negatives.start_rule=text_agreement",
            "negatives.text_threshold=0.8",
            "negatives.glofnd.init=batch_quantile",
            "negatives.glofnd.moment_init=binomial",
            "negatives.glofnd.beta1=0.5",
        ]
        for a in (0.05, 0.2)
    },
    "text_sim": {
        f"t{t}": ["negatives.name=text_sim", f"negatives.text_threshold={t}", *START]
        for t in (0.8, 0.9)
    },
}
TEXT_ONLY = {"text_sim"}
#: image-image regimes give text_sim the captions as side evidence (reports beside the images;
#: the model sees images only, so every other method's runs are unchanged by it)
SIDE = ["data.side_captions=true"]
TUNE_SEED = 100
VALIDATION = ["data.validation_size=2000"]


#: stable_glofnd (GloFND over the frozen initial encoder) runs only where that encoder is
#: pretrained and its similarities mean something: image-image from pretrained weights. In
#: image-text the initial model's image and text heads are fresh, unaligned projections, so its
#: cross-modal similarities carry no meaning at the start (with pretrained unimodal towers as
#: here; an aligned pretrained CLIP would differ).
STABLE_IN = {"ii_3_pre"}
#: the text_agreement start rule is measured where texts are the model's other input
AGREE_IN = {"it_tint_tpl_pre"}
#: eta_glofnd needs SSD's eta; that regime compares it with GloFND at a constant alpha only
ETA_IN = {"it_ssd_skewed"}


def methods_of(regime: str) -> list[str]:
    if regime in ETA_IN:
        return ["none", "oracle", "glofnd", "eta_glofnd"]
    only = {"stable_glofnd": STABLE_IN, "glofnd_agree": AGREE_IN, "eta_glofnd": ETA_IN}
    return [m for m in METHODS if m not in only or regime in only[m]]


#: regimes whose detectors start masking at another epoch than START's
#: (ii_3_pre trains 4 epochs: masking from epoch 1 gives it 3 masked epochs)
START_OF = {"it_tint_tpl_start0": 0, "ii_3_pre": 1}


def overrides_of(regime: str, method: str, label: str) -> list[str]:
    side = SIDE if method in TEXT_ONLY and regime.startswith("ii") else []
    over = METHODS[method][label]
    detector = next(o.split("=", 1)[1] for o in over if o.startswith("negatives.name="))
    reset = [r for r in RESET if not r.startswith(f"negatives.{detector}=")]
    if regime in START_OF:
        start = f"negatives.start_epoch={START_OF[regime]}"
        over = [start if o in START else o for o in over]
        # thresholds that learn before masking start with it (update_start_epoch <= start_epoch)
        over = [o for o in over if not o.startswith("negatives.update_start_epoch=")]
    return [*reset, *over, *side]
