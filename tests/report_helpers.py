"""Realistic run directories for the HTML-report tests, written in milliseconds.

Each file is produced the way the library produces it: the config by ``load_config`` (dumped as
the trainer does), the fairness audit by :func:`debiascl.fairness.metrics.fairness_report` on
seeded scores, the eta summary by :func:`debiascl.eta.summary.eta_summary`, the embedding sample
by :func:`debiascl.eval.embedding_sample.embedding_sample_bytes`; only the per-epoch numbers of
``metrics.jsonl`` and the probe accuracies are made up (from the seed).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from debiascl.config import load_config
from debiascl.eta.summary import eta_summary
from debiascl.eval.embedding_sample import FILE_NAME as EMB_FILE
from debiascl.eval.embedding_sample import embedding_sample_bytes
from debiascl.eval.features import FeatureSet
from debiascl.fairness.metrics import fairness_report
from debiascl.negatives.removed_pairs import FILE_NAME as PAIRS_FILE
from debiascl.negatives.removed_pairs import records_to_csv


def lp_value(kind: str, seed: int) -> float:
    """The made-up linear-probe accuracy of a generated run."""
    return {"simclr": 0.80, "clip": 0.60}[kind] + 0.02 * seed


def write_run(root: Path, kind: str, seed: int, epochs: int = 4) -> Path:
    """``kind``: ``simclr`` (image-image, GloFND, labels) or ``clip`` (image-text, SSD with a
    per-sample eta, a sensitive attribute and the fairness audit)."""
    rng = np.random.default_rng(seed)
    run = root / f"{kind}_s{seed}"
    run.mkdir(parents=True)
    if kind == "simclr":
        cfg = load_config("digits_simclr", [f"seed={seed}", "negatives.name=glofnd"])
    else:
        cfg = load_config("digits_clip", [f"seed={seed}", "loss.name=ssd"])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    records = []
    for e in range(1, epochs + 1):
        rec: dict[str, Any] = {
            "epoch": e,
            "step": 10 * e,
            "loss": 4.0 / e + 0.1 * seed,
            "lr": 0.003 * (1 - e / (epochs + 1)),
        }
        if kind == "simclr":
            rec.update(
                {
                    "negatives/removed_fraction": 0.01 * e,
                    "negatives/precision": 0.5 + 0.02 * e,
                    "negatives/recall": 0.1 * e,
                    "negatives/f1": 0.2,
                    "negatives/lambda/image/p10": 0.9 - 0.05 * e,
                    "negatives/lambda/image/p50": 0.95 - 0.05 * e,
                    "negatives/lambda/image/p90": 1.0 - 0.05 * e,
                }
            )
        else:
            rec.update({"negatives/removed_fraction": 0.0, "negatives/clamped_fraction": 0.01})
        records.append(rec)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary: dict[str, Any] = {
        "name": cfg.name,
        "seed": seed,
        "epochs": epochs,
        "steps": 10 * epochs,
        "linear_probe": {"100%": {"mean": lp_value(kind, seed), "std": 0.0}},
        "knn": {"accuracy": 0.7 + 0.01 * seed},
    }
    n, classes = 300, 10
    labels = rng.integers(0, classes, n)
    if kind == "simclr":
        summary["fn_detection"] = {"removed_fraction": 0.04, "precision": 0.58, "recall": 0.4}
        pairs = [
            {
                "epoch": int(rng.integers(1, epochs + 1)),
                "direction": "image",
                "anchor_id": int(rng.integers(0, 200)),
                "candidate_id": int(rng.integers(0, 200)),
                "similarity": float(rng.uniform(0.5, 1.0)),
                "labels_agree": int(rng.integers(0, 2)),
                "key": float(rng.random()),
            }
            for _ in range(30)
        ]
        (run / PAIRS_FILE).write_text(records_to_csv(pairs))
        attrs = None
    else:
        scores = rng.random((n, classes)) + 0.3 * np.eye(classes)[labels]
        group = rng.integers(0, 2, n)
        audit = fairness_report(
            scores / scores.sum(1, keepdims=True),
            labels,
            {"sex": np.where(group == 1, "F", "M")},
            "argmax",
            bootstrap=20,
            seed=seed,
        )
        summary["zero_shot"] = {"accuracy": 0.5 + 0.01 * seed, "auc_macro": 0.8}
        summary["retrieval"] = {"image_to_text": {"R@1": 0.1}, "text_to_image": {"R@1": 0.05}}
        summary["fairness"] = {"zero_shot": {"fairness": audit}}
        texts = [f"caption {i % 7}" for i in range(n)]
        eta = {
            "source": "corpus_lm",
            **eta_summary(
                torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 0.1,
                texts,
                log_it=False,
            ),
        }
        (run / "eta_summary.json").write_text(json.dumps(eta))
        attrs = {"sex": torch.as_tensor(group)}
    (run / "summary.json").write_text(json.dumps(summary))
    fs = FeatureSet(
        features=torch.as_tensor(rng.normal(size=(n, 16)) + labels[:, None], dtype=torch.float32),
        labels=torch.as_tensor(labels),
        ids=torch.arange(n),
        attrs=attrs,
    )
    (run / EMB_FILE).write_bytes(embedding_sample_bytes(fs, ["sex"] if attrs else None))
    return run


class PageParser(HTMLParser):
    """Sections (id -> plots and missing-data notes) of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, list[str]]] = {}
        self.current: str | None = None
        self.images: list[str] = []
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = {"plots": [], "missing": []}
        elif tag == "img":
            src = a.get("src") or ""
            self.images.append(src)
            if not src.startswith("data:image/png;base64,"):
                self.external.append(src)
            if self.current and a.get("data-plot"):
                self.sections[self.current]["plots"].append(a["data-plot"])
        elif tag == "p" and a.get("data-missing") and self.current:
            self.sections[self.current]["missing"].append(a["data-missing"])
        elif tag == "script":
            self.scripts += 1
        elif tag in ("link", "iframe") or (tag == "a" and (a.get("href") or "").startswith("http")):
            self.external.append(str(a))


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser
