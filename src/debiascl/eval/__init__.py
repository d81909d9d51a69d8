"""Frozen-feature evaluations (DESIGN.md section 4), independent of the trainer.

A trained model and its data: :func:`evaluate_model` (``debiascl.eval.run``) with plain
:class:`EvalSettings` computes everything a run reports (``Trainer.evaluate`` and
``debiascl eval RUN_DIR`` call it); :func:`encode_split` encodes one split of the data.

Extract features once per split with :func:`extract_features`, then run any protocol on the
arrays: :func:`linear_probe` / :func:`few_shot_probe`, :func:`knn_eval`, zero-shot
(:func:`class_embeddings`, :func:`zero_shot_eval`), :func:`retrieval_eval`; print results with
:func:`format_table`. Inputs are numpy arrays or torch tensors; outputs are dicts of floats with
accuracies in [0, 1]. Exact ties in any ranking count by their expected value over a random
order of the tied items (:mod:`debiascl.eval.ties`), so ties never favour the ground truth.
"""

from debiascl.eval.features import FeatureSet, encode_split, extract_features
from debiascl.eval.knn import knn_eval, knn_predict, knn_scores
from debiascl.eval.linear_probe import (
    class_balanced_subset,
    few_shot_probe,
    few_shot_subset,
    fraction_key,
    linear_probe,
    raw_pixel_features,
    raw_pixel_probe,
    select_C,
)
from debiascl.eval.report import MAIN_COLUMNS, flatten_results, format_table
from debiascl.eval.retrieval import (
    RankCounts,
    caption_group_ids,
    recall_at_k,
    retrieval_eval,
    retrieval_rank_counts,
    retrieval_ranks,
)
from debiascl.eval.run import evaluate_model
from debiascl.eval.settings import AuditSettings, EvalSettings
from debiascl.eval.ties import class_hit_rate, hit_probability
from debiascl.eval.zero_shot import (
    DEFAULT_TEMPLATES,
    class_embeddings,
    one_vs_rest_auc,
    zero_shot_accuracy,
    zero_shot_eval,
    zero_shot_scores,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "MAIN_COLUMNS",
    "AuditSettings",
    "EvalSettings",
    "FeatureSet",
    "RankCounts",
    "caption_group_ids",
    "class_balanced_subset",
    "class_embeddings",
    "class_hit_rate",
    "encode_split",
    "evaluate_model",
    "extract_features",
    "few_shot_probe",
    "few_shot_subset",
    "flatten_results",
    "format_table",
    "fraction_key",
    "hit_probability",
    "knn_eval",
    "knn_predict",
    "knn_scores",
    "linear_probe",
    "one_vs_rest_auc",
    "raw_pixel_features",
    "raw_pixel_probe",
    "recall_at_k",
    "retrieval_eval",
    "retrieval_rank_counts",
    "retrieval_ranks",
    "select_C",
    "zero_shot_accuracy",
    "zero_shot_eval",
    "zero_shot_scores",
]
