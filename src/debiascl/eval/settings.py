"""Plain settings of a run's evaluation (:func:`debiascl.eval.run.evaluate_model`).

Field names and defaults are those of the ``eval`` config section; the composition layer
(:func:`debiascl.compose.evaluation.eval_settings`) fills them from a run config, and a loop of
your own builds them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AuditSettings:
    """The fairness audit (``eval.fairness_audit``); runs when the data has attributes.

    Attributes:
        attributes: attributes to audit (None: every attribute column of the data).
        intersections: attribute combinations audited as intersections.
        val_fraction: share of the training split held out (class-stratified) as the validation
            split that picks decision thresholds; the test split is only scored.
        threshold_rule: ``youden`` | ``f1`` | ``prevalence``.
        bootstrap: bootstrap resamples for intervals (0: none).
        ece_bins: calibration bins.
        few_shot_k, few_shot_seeds: labelled images per class of the audited few-shot probes,
            and label draws.
        leakage_probe: fit a fresh attribute classifier on the frozen embeddings.
        on: the embedding audited like the fairness terms see it (``fairness.on``): ``image``,
            ``text`` or ``feature`` (backbone).
    """

    attributes: list[str] | None = None
    intersections: list[list[str]] = field(default_factory=list)
    val_fraction: float = 0.2
    threshold_rule: str = "youden"
    bootstrap: int = 200
    ece_bins: int = 10
    few_shot_k: list[int] = field(default_factory=lambda: [1, 4, 16])
    few_shot_seeds: int = 3
    leakage_probe: bool = True
    on: str = "image"


@dataclass
class EvalSettings:
    """What a run's evaluation computes (see the ``eval`` section in docs/configuration.md).

    Attributes:
        dataset: the data's registered name (built-in captioned datasets prompt zero-shot with
            their caption templates; ``synthetic_attr`` marks the audit as synthetic).
        seed: seeds the audit's validation split, bootstrap and probes.
        The others: as the ``eval.*`` settings of the same names.
    """

    dataset: str = ""
    seed: int = 0
    linear_probe_fractions: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.01])
    knn_k: int = 200
    knn_temperature: float = 0.1
    zero_shot: bool = True
    zero_shot_templates: list[str] = field(default_factory=list)
    class_names: list[str] | dict[str, str] = field(default_factory=list)
    retrieval: bool = True
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    references: bool = True
    probe_seeds: int = 1
    probe_C: float | None = None
    probe_Cs: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0])
    probe_cv_folds: int = 3
    probe_cv_max_samples: int | None = 5000
    probe_max_iter: int = 1000
    few_shot: list[int] = field(default_factory=list)
    few_shot_seeds: int = 3
    fairness_audit: AuditSettings = field(default_factory=AuditSettings)

    def probe_options(self) -> dict[str, object]:
        """Keyword arguments of the linear probes (C chosen by CV on train only)."""
        return {
            "C": self.probe_C,
            "Cs": self.probe_Cs,
            "cv_folds": self.probe_cv_folds,
            "cv_max_samples": self.probe_cv_max_samples,
            "max_iter": self.probe_max_iter,
        }
