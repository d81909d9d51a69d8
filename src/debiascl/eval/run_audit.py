"""The fairness audit of a trained model (DESIGN 3.6 and 4), called from ``evaluate_model``.

Settings: :class:`~debiascl.eval.settings.AuditSettings` (``eval.fairness_audit`` of a run).

When the data carries sensitive attributes (``data.attribute_columns`` or
``dataset=synthetic_attr``), :func:`fairness_results` audits the frozen model:

* **zero-shot** (``image_text``): prompt-ensemble class embeddings, softmax over
  ``logit_scale * cos``, the full fairness report per attribute;
* **few-shot** linear probes: ``few_shot_k`` labelled images per class drawn from the training
  split, ``few_shot_seeds`` draws, each audited;
* **leakage probes**: a fresh logistic regression trained on frozen training-split embeddings to
  predict each attribute, scored on the test split, both on the embedding the fairness terms
  see (``settings.fairness_audit.on``, from ``fairness.on``) and on the backbone features (what
  the terms cannot reach directly).

Decision thresholds come from a **validation split carved from the training data**
(``val_fraction``, class-stratified, seeded by the run seed); the test split is only scored.
Probes are fitted on the remaining training rows. The audit is returned under ``"fairness"``
(summary.json / eval.json), and :func:`~debiascl.eval.fairness_audit.format_audit` of it is
written to ``<out_dir>/fairness.txt`` and printed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from debiascl.atomic import atomic_write_text
from debiascl.data.build import DataBundle, stratified_subset
from debiascl.errors import ConfigError, DataError
from debiascl.eval.fairness_audit import (
    few_shot_audit,
    format_audit,
    leakage_probe,
    zero_shot_audit,
)
from debiascl.eval.features import EVAL_BATCH, FeatureSet, encode_split
from debiascl.eval.prompts import zero_shot_prompts
from debiascl.eval.settings import EvalSettings
from debiascl.eval.zero_shot import class_embeddings

#: headline numbers copied to ``fairness["headline"]`` (first audited attribute) for tables
HEADLINE_KEYS = (
    "leakage_embedding_accuracy",
    "leakage_embedding_chance",
    "leakage_embedding_auc",
    "leakage_backbone_auc",
    "zero_shot_accuracy",
    "zero_shot_auc",
    "zero_shot_worst_group_auc",
    "zero_shot_dpd",
    "zero_shot_eod",
)


def has_attributes(data: DataBundle) -> bool:
    """True when both splits carry sensitive attributes (the audit applies)."""
    return (
        bool(data.attr_names)
        and data.test is not None
        and getattr(data.train, "attrs", None) is not None
        and getattr(data.test, "attrs", None) is not None
    )


def _image_encoder(mode: str) -> Callable[[nn.Module, torch.Tensor], Any]:
    if mode == "image_text":
        return lambda m, x: m.encode_image(x)
    return lambda m, x: m(x)  # image_image: the projection output the loss (and terms) see


def _text_embeddings(model: nn.Module, fs: FeatureSet) -> torch.Tensor:
    if fs.texts is None:
        raise DataError("fairness.on=text needs captions in the data (data.mode=image_text)")
    return torch.cat(
        [
            model.encode_text(fs.texts[i : i + EVAL_BATCH]).float().cpu()
            for i in range(0, len(fs.texts), EVAL_BATCH)
        ]
    )


def _attr_matrix(fs: FeatureSet) -> np.ndarray:
    attrs = fs.attrs
    if attrs is None:
        raise DataError("the evaluation batches carry no attributes; set data.attribute_columns")
    if isinstance(attrs, dict):
        return np.stack([np.asarray(v) for v in attrs.values()], 1)
    a = np.asarray(attrs)
    return a[:, None] if a.ndim == 1 else a


def _named(codes: np.ndarray, vocab: dict[str, int] | None) -> np.ndarray:
    """Attribute codes -> value names (missing -1 -> None) so reports name the groups."""
    inverse = {int(c): str(v) for v, c in (vocab or {}).items()}
    out = np.empty(len(codes), dtype=object)
    for i, c in enumerate(codes.tolist()):
        out[i] = None if c < 0 else inverse.get(int(c), str(c))
    return out


def validation_rows(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(val_rows, fit_rows): a class-stratified seeded split of the **training** rows."""
    n = int(labels.numel())
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise ConfigError(
            f"eval.fairness_audit.val_fraction={fraction} leaves no training rows for the probes; "
            "lower it"
        )
    val = stratified_subset(labels.numpy(), n_val, seed)
    fit = np.setdiff1d(np.arange(n), val)
    return val, fit


def _sel(x: torch.Tensor | np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.asarray(x)[rows]


def _headline(audit: dict[str, Any], attr: str) -> dict[str, float | None]:
    out: dict[str, float | None] = dict.fromkeys(HEADLINE_KEYS)
    emb = audit.get("leakage", {}).get("embedding", {}).get(attr)
    if emb:
        out["leakage_embedding_accuracy"] = emb["accuracy"]
        out["leakage_embedding_chance"] = emb["chance_accuracy"]
        out["leakage_embedding_auc"] = emb["auc"]
    bb = audit.get("leakage", {}).get("backbone", {}).get(attr)
    if bb:
        out["leakage_backbone_auc"] = bb["auc"]
    zs = audit.get("zero_shot")
    if zs:
        rep = zs["fairness"]["attributes"][attr]
        out["zero_shot_accuracy"] = zs["accuracy"]
        out["zero_shot_auc"] = rep.get("auc")
        out["zero_shot_worst_group_auc"] = rep.get("worst_group_auc")
        out["zero_shot_dpd"] = rep.get("dpd")
        out["zero_shot_eod"] = rep.get("eod")
    return out


@torch.no_grad()
def fairness_results(
    model: nn.Module,
    data: DataBundle,
    settings: EvalSettings,
    train_fs: FeatureSet,
    test_fs: FeatureSet,
    logit_scale: float | None = None,
    device: torch.device | str = "cpu",
    out_dir: Path | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """``{"fairness": audit}`` when the data has sensitive attributes, else ``{}``.

    Args:
        model: the frozen model (in eval mode).
        data: the splits (with attributes), mode, class and attribute names.
        settings: ``settings.fairness_audit`` and the zero-shot prompt settings.
        train_fs, test_fs: backbone features of the train and test splits (as extracted by
            ``evaluate_model``; rows carry labels, ids and attributes).
        logit_scale: 1 / t the model trained with (zero-shot audit of image-text models).
        device: where the model runs.
        out_dir: ``fairness.txt`` goes here (None: not written).
        write: write ``fairness.txt`` (with ``out_dir``) and print the table.

    Returns:
        ``{"fairness": {"audited_attributes", "validation", "zero_shot", "few_shot", "leakage":
        {"embedding": {attr: probe}, "backbone": {attr: probe}}, "headline", "note"}}``.
    """
    if not has_attributes(data):
        return {}
    au = settings.fairness_audit
    on = au.on
    names = list(au.attributes or data.attr_names)
    unknown = [a for a in names if a not in data.attr_names]
    if unknown:
        raise ConfigError(
            f"eval.fairness_audit.attributes {unknown} are not attribute columns of the data "
            f"{list(data.attr_names)}; fix the names"
        )
    if train_fs.labels is None or not bool((train_fs.labels >= 0).any()):
        return {}  # every audit here needs class labels
    # image embeddings (zero-shot; the adversary's view for fairness.on=image)
    needs_image = on == "image" or data.mode == "image_text"
    train_img = test_img = None
    if needs_image:
        encode = _image_encoder(data.mode)
        train_img = encode_split(model, encode, data, "train", device).features
        test_img = encode_split(model, encode, data, "test", device).features
    # unlabelled rows (label -1) sit out of the audit; evaluate_model reports how many
    keep_tr = train_fs.labels >= 0
    keep_te = test_fs.labels >= 0 if test_fs.labels is not None else None
    if not bool(keep_tr.all()) or (keep_te is not None and not bool(keep_te.all())):
        train_fs = train_fs.select(keep_tr)
        test_fs = test_fs if keep_te is None else test_fs.select(keep_te)
        if train_img is not None and test_img is not None:
            train_img = train_img[keep_tr]
            test_img = test_img if keep_te is None else test_img[keep_te]
    assert train_fs.labels is not None
    if on == "text":
        train_emb, test_emb = _text_embeddings(model, train_fs), _text_embeddings(model, test_fs)
    elif on == "feature":
        train_emb, test_emb = train_fs.features, test_fs.features
    else:
        assert train_img is not None and test_img is not None
        train_emb, test_emb = train_img, test_img
    tr_a = _attr_matrix(train_fs)
    te_a = _attr_matrix(test_fs)
    cols = {a: data.attr_names.index(a) for a in names}
    # integer codes for the leakage probes, value names for the reports
    train_codes = {a: tr_a[:, j].astype(np.int64) for a, j in cols.items()}
    test_codes = {a: te_a[:, j].astype(np.int64) for a, j in cols.items()}
    test_attrs = {a: _named(test_codes[a], data.attr_vocab.get(a)) for a in names}
    known = {
        a: sorted({str(v) for v in _named(train_codes[a], data.attr_vocab.get(a)) if v is not None})
        for a in names
    }
    y_train = train_fs.labels.numpy()
    y_test = test_fs.labels.numpy() if test_fs.labels is not None else None
    val, fit = validation_rows(train_fs.labels, au.val_fraction, settings.seed)
    report_kwargs: dict[str, Any] = {
        "intersections": [tuple(i) for i in au.intersections],
        "known_values": known,
        "class_names": data.class_names,
        "n_bins": au.ece_bins,
    }
    audit: dict[str, Any] = {
        "audited_attributes": names,
        "validation": {
            "source": "training split (class-stratified, seeded); never the test split",
            "fraction": au.val_fraction,
            "n_val": int(val.size),
            "n_fit": int(fit.size),
            "n_test": len(test_fs),
            "threshold_rule": au.threshold_rule,
        },
        "embedding": on,
    }
    if settings.dataset == "synthetic_attr":
        audit["note"] = "SYNTHETIC attribute (synthetic_attr benchmark), not a demographic audit"
    # zero-shot
    if data.mode == "image_text" and settings.zero_shot and data.class_names and y_test is not None:
        assert train_img is not None and test_img is not None
        prompts = zero_shot_prompts(
            data.class_names, settings.dataset, settings.zero_shot_templates, settings.class_names
        )
        assert prompts is not None and logit_scale is not None
        class_emb = class_embeddings(
            lambda texts: model.encode_text(texts), prompts.fill_names, prompts.templates
        ).cpu()
        audit["zero_shot"] = zero_shot_audit(
            _sel(train_img, val),
            y_train[val],
            test_img,
            y_test,
            test_attrs,
            class_emb,
            logit_scale=logit_scale,
            decision=au.threshold_rule,
            bootstrap=au.bootstrap,
            seed=settings.seed,
            **report_kwargs,
        )
    # few-shot probes on the adversary's embedding
    if au.few_shot_k and y_test is not None:
        audit["few_shot"] = few_shot_audit(
            _sel(train_emb, fit),
            y_train[fit],
            _sel(train_emb, val),
            y_train[val],
            test_emb,
            y_test,
            test_attrs,
            shots=au.few_shot_k,
            seeds=au.few_shot_seeds,
            decision=au.threshold_rule,
            **report_kwargs,
        )
    # leakage: a fresh classifier per attribute, on the embedding and on backbone features
    if au.leakage_probe:
        leak: dict[str, dict[str, Any]] = {"embedding": {}, "backbone": {}}
        for a in names:
            for where, tr_x, te_x in (
                ("embedding", train_emb, test_emb),
                ("backbone", train_fs.features, test_fs.features),
            ):
                leak[where][a] = leakage_probe(
                    _sel(tr_x, fit),
                    train_codes[a][fit],
                    te_x,
                    test_codes[a],
                    seed=settings.seed,
                )
        audit["leakage"] = leak
    audit["headline"] = _headline(audit, names[0])
    if write:
        text = format_audit({k: v for k, v in audit.items() if k != "headline"})
        header = f"Fairness audit ({', '.join(names)}; embedding: {on})"
        if "note" in audit:
            header += f"\n{audit['note']}"
        text = f"{header}\n\n{text}\n"
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(out_dir) / "fairness.txt", text)
        print(text)
    return {"fairness": audit}
