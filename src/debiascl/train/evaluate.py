"""Frozen-feature evaluation of a trained model, and ``debiascl eval RUN_DIR``.

Image-image runs: linear probe (label fractions, class-balanced, several label draws) and
weighted kNN on backbone features. Image-text runs add zero-shot classification with a prompt
ensemble and image-text retrieval R@1/5/10 on the test split. With ``references=True`` the same
probes are run on the encoder at its random initialisation and on raw pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from debiascl.compose import build_data, build_model
from debiascl.config.schema import EvalConfig
from debiascl.data.augment import EvalTransform
from debiascl.data.build import make_loader
from debiascl.errors import CheckpointError, ConfigError, DataError, TrainingError
from debiascl.eval.embedding_sample import FILE_NAME as EMBEDDINGS_FILE
from debiascl.eval.embedding_sample import embedding_sample_bytes
from debiascl.eval.features import FeatureSet, extract_features
from debiascl.eval.knn import knn_eval
from debiascl.eval.linear_probe import few_shot_probe, linear_probe, raw_pixel_probe
from debiascl.eval.report import format_table
from debiascl.eval.retrieval import caption_group_ids, retrieval_eval
from debiascl.eval.zero_shot import class_embeddings, zero_shot_eval
from debiascl.train import checkpoint as ckpt
from debiascl.train.atomic import atomic_write
from debiascl.train.fairness_eval import fairness_results
from debiascl.train.legacy import split_logit_scale
from debiascl.train.prompts import zero_shot_prompts
from debiascl.train.setup import seed_everything

if TYPE_CHECKING:
    from debiascl.train.trainer import Trainer

EVAL_BATCH = 512
logger = logging.getLogger("debiascl.eval")


def _features(
    trainer: Trainer,
    model: nn.Module,
    encode: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    split: str,
) -> FeatureSet:
    dataset = trainer.data.train if split == "train" else trainer.data.test
    if dataset is None:
        raise DataError(f"dataset {trainer.cfg.data.dataset!r} has no {split} split to evaluate on")
    transform = EvalTransform(trainer.data.image_size, trainer.data.channels).to(trainer.device)
    loader = make_loader(dataset, EVAL_BATCH, train=False, seed=0)

    def run(batch: dict[str, Any]) -> torch.Tensor:
        return encode(model, transform(batch["image"].to(trainer.device)))

    return extract_features(run, loader, trainer.device, desc=f"features ({split})")


def probe_options(cfg: EvalConfig) -> dict[str, Any]:
    """Keyword arguments of the linear probes from ``eval.*`` (C chosen by CV on train only)."""
    return {
        "C": cfg.probe_C,
        "Cs": cfg.probe_Cs,
        "cv_folds": cfg.probe_cv_folds,
        "cv_max_samples": cfg.probe_cv_max_samples,
        "max_iter": cfg.probe_max_iter,
    }


def _probe_results(trainer: Trainer, train: FeatureSet, test: FeatureSet) -> dict[str, Any]:
    cfg = trainer.cfg.eval
    out: dict[str, Any] = {}
    if train.labels is None or test.labels is None:
        return out
    train, test = labelled_rows(train), labelled_rows(test)  # unlabelled rows (-1) sit out
    if len(train) == 0 or len(test) == 0:
        return out
    out["linear_probe"] = linear_probe(
        train.features,
        train.labels,
        test.features,
        test.labels,
        fractions=cfg.linear_probe_fractions,
        seeds=cfg.probe_seeds,
        **probe_options(cfg),
    )
    if cfg.few_shot:
        out["few_shot"] = few_shot_probe(
            train.features,
            train.labels,
            test.features,
            test.labels,
            shots=cfg.few_shot,
            seeds=cfg.few_shot_seeds,
            **probe_options(cfg),
        )
    out["knn"] = knn_eval(
        train.features,
        train.labels,
        test.features,
        test.labels,
        k=min(cfg.knn_k, len(train)),
        temperature=cfg.knn_temperature,
    )
    return out


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


def _backbone(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.features(x)


@torch.no_grad()
def evaluate_model(trainer: Trainer, references: bool = False) -> dict[str, Any]:
    """All evaluations that apply to the trainer's mode and data (see module docstring)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    # The probes are many small sklearn fits: with several BLAS threads on a busy CPU they run
    # up to 50x slower (measured: 102 s vs 2 s on the quick demo), and one thread loses nothing.
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            return _evaluate(trainer, model, references)
        finally:
            model.train(was_training)


def _evaluate(trainer: Trainer, model: nn.Module, references: bool) -> dict[str, Any]:
    train_fs = _features(trainer, model, _backbone, "train")
    test_fs = _features(trainer, model, _backbone, "test")
    results = _probe_results(trainer, train_fs, test_fs)
    excluded = unlabelled_counts(train_fs, test_fs)
    if excluded:  # the probes, kNN, zero-shot and the audit used the labelled rows only
        results["unlabelled_excluded"] = excluded
    # a bounded sample of test embeddings for the report's 2-D embedding view
    try:
        atomic_write(
            trainer.run_dir / EMBEDDINGS_FILE,
            lambda fh: fh.write(embedding_sample_bytes(test_fs, trainer.data.attr_names)),
        )
    except TrainingError as err:  # a full disk must not lose the evaluation computed so far
        logger.warning("%s", err)
        results.setdefault("unsaved_files", []).append(EMBEDDINGS_FILE)
    if trainer.cfg.data.mode == "image_text":
        results.update(_image_text_results(trainer, model))
    # fairness audit (zero-shot, few-shot, leakage) when the data has sensitive attributes
    results.update(fairness_results(trainer, model, train_fs, test_fs))
    if references:
        results["references"] = _references(trainer)
    return results


def trained_logit_scale(trainer: Trainer) -> float:
    """The logit scale 1 / t the run trained with (the loss owns it; learned or fixed)."""
    scale = trainer.objective.logit_scale
    assert scale is not None, "the trainer's loss always owns its temperature"
    return scale


def _image_text_results(trainer: Trainer, model: nn.Module) -> dict[str, Any]:
    cfg = trainer.cfg.eval
    out: dict[str, Any] = {}
    image = _features(trainer, model, lambda m, x: m.encode_image(x), "test")
    prompts = zero_shot_prompts(trainer.cfg, trainer.data.class_names)
    labelled = labelled_rows(image)
    if cfg.zero_shot and prompts and labelled.labels is not None and len(labelled):
        class_emb = class_embeddings(
            lambda texts: model.encode_text(texts), prompts.fill_names, prompts.templates
        )
        out["zero_shot"] = zero_shot_eval(
            labelled.features,
            labelled.labels,
            class_emb,
            trained_logit_scale(trainer),
            prompts.class_names,
        )
        out["zero_shot"].update(prompts.describe())
    if cfg.retrieval and image.texts:
        text_emb = torch.cat(
            [
                model.encode_text(image.texts[i : i + EVAL_BATCH]).float().cpu()
                for i in range(0, len(image.texts), EVAL_BATCH)
            ]
        )
        out["retrieval"] = retrieval_eval(image.features, text_emb, ks=cfg.retrieval_ks)
        # Template captions repeat: also count every image with the query's caption as a hit.
        groups = caption_group_ids(image.texts)
        if groups.unique().numel() < len(groups):
            out["retrieval_by_caption"] = retrieval_eval(
                image.features, text_emb, ks=cfg.retrieval_ks, image_ids=groups, text_ids=groups
            )
    return out


def _references(trainer: Trainer) -> dict[str, Any]:
    """Random-init encoder (same seed as training's init) and raw-pixel logistic regression."""
    seed_everything(trainer.cfg.seed)
    fresh = (
        build_model(
            trainer.cfg.model, trainer.cfg.data.mode, trainer.data.channels, trainer.info.texts
        )
        .to(trainer.device)
        .eval()
    )
    random_init = _probe_results(
        trainer,
        _features(trainer, fresh, _backbone, "train"),
        _features(trainer, fresh, _backbone, "test"),
    )
    out: dict[str, Any] = {"random_init": random_init}
    train_px, test_px = _pixels(trainer, "train"), _pixels(trainer, "test")
    if train_px[1] is not None and test_px[1] is not None:
        known_tr, known_te = train_px[1] >= 0, test_px[1] >= 0
        train_px = (train_px[0][known_tr], train_px[1][known_tr])
        test_px = (test_px[0][known_te], test_px[1][known_te])
        out["raw_pixels"] = {
            "linear_probe": raw_pixel_probe(
                train_px[0],
                train_px[1],
                test_px[0],
                test_px[1],
                fractions=trainer.cfg.eval.linear_probe_fractions,
                seeds=trainer.cfg.eval.probe_seeds,
                **probe_options(trainer.cfg.eval),
            )
        }
    return out


def _pixels(trainer: Trainer, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    transform = EvalTransform(trainer.data.image_size, trainer.data.channels)
    fs = _features(trainer, nn.Identity(), lambda m, x: x.flatten(1), split)
    del transform
    return fs.features, fs.labels


SUMMARY_COLUMNS = {
    "linear_probe/100%": "LP 100%",
    "linear_probe/10%": "LP 10%",
    "linear_probe/1%": "LP 1%",
    "knn/accuracy": "kNN",
    "zero_shot/accuracy": "zero-shot",
    "zero_shot/auc_macro": "ZS AUC",
    "retrieval/image_to_text/R@1": "I2T R@1",
    "retrieval/text_to_image/R@1": "T2I R@1",
    "fairness/headline/leakage_embedding_accuracy": "leak acc",
    "fairness/headline/leakage_embedding_auc": "leak AUC",
    "fairness/headline/zero_shot_worst_group_auc": "ZS wg-AUC",
    "fairness/headline/zero_shot_dpd": "ZS DPD",
    "fairness/headline/zero_shot_eod": "ZS EOD",
    "fn_detection/removed_fraction": "removed",
    "fn_detection/precision": "FN prec",
    "fn_detection/recall": "FN rec",
}


def format_summary(summary: dict[str, Any]) -> str:
    """Results table (accuracies in %) with the trained model and any references as rows."""
    rows: dict[str, Any] = {"trained": summary}
    for name, res in summary.get("references", {}).items():
        rows[f"reference: {name}"] = res
    present = {k: v for k, v in SUMMARY_COLUMNS.items() if any(_has(r, k) for r in rows.values())}
    if not summary.get("fn_detection", {}).get("removed_fraction"):
        # nothing was removed: precision is undefined and recall is 0 by construction
        present = {
            k: v
            for k, v in present.items()
            if not k.startswith("fn_detection/") or k == "fn_detection/removed_fraction"
        }
    lines = [format_table(rows, present, row_header="model")]
    if "fn_detection/removed_fraction" in present:
        lines.append("removed: share of negative pairs the detector removed in the last epoch (%)")
    excluded = summary.get("unlabelled_excluded")
    if excluded:
        lines.append(
            "unlabelled rows left out of the label-based evaluation: "
            + ", ".join(f"{n} of {split}" for split, n in excluded.items())
        )
    zero_shot = summary.get("zero_shot")
    if isinstance(zero_shot, dict) and zero_shot.get("class_names"):
        templates = zero_shot.get("templates") or []
        lines.append(
            f"zero-shot classes (label order): {', '.join(zero_shot['class_names'])}; "
            f"{len(templates)} prompt templates ({zero_shot.get('template_source')}), e.g. "
            f"{templates[0]!r}"
            if templates
            else f"zero-shot classes (label order): {', '.join(zero_shot['class_names'])}"
        )
    return "\n".join(lines)


def _has(tree: Any, path: str) -> bool:
    for part in path.split("/"):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def evaluate_run_dir(
    run_dir: Path,
    checkpoint: str | None = None,
    overrides: list[str] | None = None,
    output: Path | None = None,
    show: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Re-evaluate a run directory's newest (or given) checkpoint and write the results.

    Args:
        run_dir: a directory written by ``debiascl train``.
        checkpoint: checkpoint path (default: the newest of the run).
        overrides: ``eval.*`` and evaluation-only ``data.*`` settings (see
            :mod:`debiascl.train.eval_run`).
        output: results file (default ``run_dir/eval.json``); files the evaluation writes
            besides (``fairness.txt``, the embedding sample) go into its folder.
        show: called with the results before they are saved (the CLI prints them).

    Raises:
        ConfigError: the output folder is not writable (checked before any work) or an override
            changes a data setting the model depends on.
        ResultsNotSavedError: the results were computed but could not be written; they are on
            the exception's ``results``.
    """
    from debiascl.train.eval_run import ensure_writable_dir, eval_configs, save_results
    from debiascl.train.trainer import Trainer

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    output = Path(output) if output is not None else run_dir / "eval.json"
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; name a file such as {output}/eval.json")
    ensure_writable_dir(
        output.parent, "pass --output FILE in a writable folder to evaluate a read-only run"
    )
    model_cfg, cfg = eval_configs(config_path, list(overrides or []))
    trainer = Trainer(model_cfg, run_dir=run_dir)
    path = ckpt.resolve_resume(checkpoint or "latest", run_dir)
    state = ckpt.load_checkpoint(path, trainer.fingerprint, trainer.fingerprint_parts)
    model_state, objective_state = split_logit_scale(
        state["model"], state["objective"], trainer.objective
    )
    trainer.model.load_state_dict(model_state)
    trainer.objective.load_state_dict(objective_state)  # the trained temperature
    if cfg.data != model_cfg.data:  # evaluation data (another test manifest, label column, ...)
        trainer.data = build_data(cfg.data, cfg.seed)
    trainer.cfg = cfg
    trainer.run_dir = output.parent  # fairness.txt and the embedding sample go next to output
    results = evaluate_model(trainer, references=cfg.eval.references)
    results["checkpoint"] = str(path)
    if show is not None:
        show(results)
    save_results(results, output)
    return results
