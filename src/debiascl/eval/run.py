"""Frozen-feature evaluation of a trained model: everything that applies to the model and data.

Image-image models: linear probe (label fractions, class-balanced, several label draws) and
weighted kNN on backbone features. Two-tower (image-text) models add zero-shot classification
with a prompt ensemble and image-text retrieval R@1/5/10 on the test split. With
``settings.references`` the same probes run on the encoder at its random initialisation and on
raw pixels. Data with sensitive attributes is audited (:mod:`debiascl.eval.run_audit`).

Takes a model, the data and plain :class:`~debiascl.eval.settings.EvalSettings` -- no trainer and
no run config: ``Trainer.evaluate`` and ``debiascl eval RUN_DIR`` both call
:func:`evaluate_model`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from debiascl.atomic import atomic_write
from debiascl.data.build import DataBundle
from debiascl.errors import TrainingError
from debiascl.eval.embedding_sample import FILE_NAME as EMBEDDINGS_FILE
from debiascl.eval.embedding_sample import embedding_sample_bytes
from debiascl.eval.features import EVAL_BATCH, FeatureSet, encode_split
from debiascl.eval.knn import knn_eval
from debiascl.eval.linear_probe import few_shot_probe, linear_probe, raw_pixel_probe
from debiascl.eval.prompts import zero_shot_prompts
from debiascl.eval.retrieval import caption_group_ids, retrieval_eval
from debiascl.eval.run_audit import fairness_results
from debiascl.eval.settings import EvalSettings
from debiascl.eval.zero_shot import class_embeddings, zero_shot_eval

logger = logging.getLogger("debiascl.eval")


def backbone(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Backbone features (before the projection head), what the probes and kNN read."""
    return model.features(x)


def labelled_rows(fs: FeatureSet) -> FeatureSet:
    """The rows of ``fs`` with a known label (>= 0); unlabelled rows carry -1."""
    if fs.labels is None or bool((fs.labels >= 0).all()):
        return fs
    return fs.select(fs.labels >= 0)


def unlabelled_counts(train: FeatureSet, test: FeatureSet) -> dict[str, int]:
    """``{"train": n, "test": m}``: rows left out of label-based evaluation (label -1)."""
    counts = {
        split: int((fs.labels < 0).sum())
        for split, fs in (("train", train), ("test", test))
        if fs.labels is not None
    }
    return counts if any(counts.values()) else {}


def probe_results(settings: EvalSettings, train: FeatureSet, test: FeatureSet) -> dict[str, Any]:
    """Linear probe, few-shot probes (``settings.few_shot``) and kNN on labelled rows."""
    out: dict[str, Any] = {}
    if train.labels is None or test.labels is None:
        return out
    train, test = labelled_rows(train), labelled_rows(test)  # unlabelled rows (-1) sit out
    if len(train) == 0 or len(test) == 0:
        return out
    options = settings.probe_options()
    out["linear_probe"] = linear_probe(
        train.features,
        train.labels,
        test.features,
        test.labels,
        fractions=settings.linear_probe_fractions,
        seeds=settings.probe_seeds,
        **options,
    )
    if settings.few_shot:
        out["few_shot"] = few_shot_probe(
            train.features,
            train.labels,
            test.features,
            test.labels,
            shots=settings.few_shot,
            seeds=settings.few_shot_seeds,
            **options,
        )
    out["knn"] = knn_eval(
        train.features,
        train.labels,
        test.features,
        test.labels,
        k=min(settings.knn_k, len(train)),
        temperature=settings.knn_temperature,
    )
    return out


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: DataBundle,
    settings: EvalSettings,
    *,
    logit_scale: float | None = None,
    device: torch.device | str = "cpu",
    out_dir: Path | None = None,
    reference_model: Callable[[], nn.Module] | None = None,
) -> dict[str, Any]:
    """Every evaluation that applies to ``model`` and ``data`` (see the module docstring).

    Args:
        model: the trained model: ``features(x)`` (backbone), ``model(x)`` (projection, image-
            image) or ``encode_image(x)`` / ``encode_text(texts)`` (image-text); put back in its
            training mode afterwards.
        data: train and test splits, image size, channels, mode, class and attribute names.
        settings: what to compute.
        logit_scale: 1 / t the model trained with (zero-shot softmax; image-text only).
        device: where the model runs.
        out_dir: receives ``fairness.txt`` and the embedding sample (None: not written).
        reference_model: builds the encoder at its random initialisation (seeded as training
            seeded it) for ``settings.references``; None leaves that reference out.

    Returns:
        ``{"linear_probe", "knn", "few_shot"?, "zero_shot"?, "retrieval"?, "fairness"?,
        "unlabelled_excluded"?, "references"?, "unsaved_files"?}``; accuracies in [0, 1].

    Raises:
        DataError: a split to evaluate on is missing or yields nothing.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    # The probes are many small sklearn fits: with several BLAS threads on a busy CPU they run
    # up to 50x slower (measured: 102 s vs 2 s on the quick demo), and one thread loses nothing.
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            return _evaluate(model, data, settings, logit_scale, device, out_dir, reference_model)
        finally:
            model.train(was_training)


def _evaluate(
    model: nn.Module,
    data: DataBundle,
    settings: EvalSettings,
    logit_scale: float | None,
    device: torch.device,
    out_dir: Path | None,
    reference_model: Callable[[], nn.Module] | None,
) -> dict[str, Any]:
    train_fs = encode_split(model, backbone, data, "train", device)
    test_fs = encode_split(model, backbone, data, "test", device)
    results = probe_results(settings, train_fs, test_fs)
    excluded = unlabelled_counts(train_fs, test_fs)
    if excluded:  # the probes, kNN, zero-shot and the audit used the labelled rows only
        results["unlabelled_excluded"] = excluded
    if out_dir is not None:  # a bounded sample of test embeddings for the report's 2-D view
        try:
            atomic_write(
                Path(out_dir) / EMBEDDINGS_FILE,
                lambda fh: fh.write(embedding_sample_bytes(test_fs, data.attr_names)),
            )
        except TrainingError as err:  # a full disk must not lose the evaluation so far
            logger.warning("%s", err)
            results.setdefault("unsaved_files", []).append(EMBEDDINGS_FILE)
    if data.mode == "image_text":
        results.update(_image_text_results(model, data, settings, logit_scale, device))
    # fairness audit (zero-shot, few-shot, leakage) when the data has sensitive attributes
    results.update(
        fairness_results(
            model, data, settings, train_fs, test_fs, logit_scale, device, out_dir=out_dir
        )
    )
    if settings.references:
        results["references"] = _references(data, settings, device, reference_model)
    return results


def _image_text_results(
    model: nn.Module,
    data: DataBundle,
    settings: EvalSettings,
    logit_scale: float | None,
    device: torch.device,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    image = encode_split(model, lambda m, x: m.encode_image(x), data, "test", device)
    prompts = zero_shot_prompts(
        data.class_names, settings.dataset, settings.zero_shot_templates, settings.class_names
    )
    labelled = labelled_rows(image)
    if settings.zero_shot and prompts and labelled.labels is not None and len(labelled):
        if logit_scale is None:
            raise ValueError("zero-shot evaluation needs the logit scale the model trained with")
        class_emb = class_embeddings(
            lambda texts: model.encode_text(texts), prompts.fill_names, prompts.templates
        )
        out["zero_shot"] = zero_shot_eval(
            labelled.features, labelled.labels, class_emb, logit_scale, prompts.class_names
        )
        out["zero_shot"].update(prompts.describe())
    if settings.retrieval and image.texts:
        text_emb = torch.cat(
            [
                model.encode_text(image.texts[i : i + EVAL_BATCH]).float().cpu()
                for i in range(0, len(image.texts), EVAL_BATCH)
            ]
        )
        ks = settings.retrieval_ks
        out["retrieval"] = retrieval_eval(image.features, text_emb, ks=ks)
        # Template captions repeat: also count every image with the query's caption as a hit.
        groups = caption_group_ids(image.texts)
        if groups.unique().numel() < len(groups):
            out["retrieval_by_caption"] = retrieval_eval(
                image.features, text_emb, ks=ks, image_ids=groups, text_ids=groups
            )
    return out


def _references(
    data: DataBundle,
    settings: EvalSettings,
    device: torch.device,
    reference_model: Callable[[], nn.Module] | None,
) -> dict[str, Any]:
    """Random-init encoder (same seed as training's init) and raw-pixel logistic regression."""
    out: dict[str, Any] = {}
    if reference_model is not None:
        fresh = reference_model().to(device).eval()
        out["random_init"] = probe_results(
            settings,
            encode_split(fresh, backbone, data, "train", device),
            encode_split(fresh, backbone, data, "test", device),
        )
    pixels = nn.Identity()
    train_px = encode_split(pixels, lambda m, x: x.flatten(1), data, "train", device)
    test_px = encode_split(pixels, lambda m, x: x.flatten(1), data, "test", device)
    if train_px.labels is not None and test_px.labels is not None:
        train_px, test_px = labelled_rows(train_px), labelled_rows(test_px)
        assert train_px.labels is not None and test_px.labels is not None
        out["raw_pixels"] = {
            "linear_probe": raw_pixel_probe(
                train_px.features,
                train_px.labels,
                test_px.features,
                test_px.labels,
                fractions=settings.linear_probe_fractions,
                seeds=settings.probe_seeds,
                **settings.probe_options(),
            )
        }
    return out
