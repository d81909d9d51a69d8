"""The main job: each false-negative method side by side, image-image and image-text.

Block 1: SimCLR on Fashion-MNIST; prints linear-probe (100% / 10% / 1% labels) and kNN accuracy,
next to two references computed in the same run (the same encoder at random initialisation, and
logistic regression on raw pixels). Block 2: CLIP-style SogCLR on the SYNTHETIC colour x garment
image-text set (near-identical reports within a class); prints zero-shot and 10%-label probe
accuracy.
Both give false-negative detection quality. Writes ``results.json``, ``results.md`` and
``report.html`` (the HTML report with plots; its path is printed; the image-text block's is in
``image_text/report.html``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from debiascl.config import load_config
from debiascl.config.schema import NegativesConfig
from debiascl.registry import DETECTORS
from debiascl.train.atomic import atomic_write_text

# (label, detector name, overrides). Methods whose detector is not registered are left out.
# The settings are those of the GloFND study (docs/experiments/glofnd.md), chosen by DESIGN 3.3's
# reasoning, not on the test split: alpha 0.05 (below the ~10% same-class rate among negatives of
# 10 balanced classes), masking from epoch 3 (0-based) once features have some class structure,
# and GloFND's thresholds initialised from the batch quantile and learning from epoch 1, so they
# have settled when masking starts. Every method shares the start epoch; the base loss is the
# config's NT-Xent, so the rows differ only in which negatives are removed.
_START = "negatives.start_epoch=3"
DEMO_METHODS: list[tuple[str, str, list[str]]] = [
    ("SimCLR (no filtering)", "none", []),
    ("FNC (batch quantile)", "fnc", ["negatives.alpha=0.05", _START]),
    (
        "GloFND",
        "glofnd",
        [
            "negatives.alpha=0.05",
            _START,
            "negatives.update_start_epoch=1",
            "negatives.glofnd.init=batch_quantile",
        ],
    ),
    # Text evidence: the captions beside the images (data.side_captions; the model sees images
    # only), removing negatives whose caption's MiniLM cosine to the anchor's is >= 0.8 -- the
    # threshold chosen on a validation split in docs/experiments/fn_regimes.md (image-image, 10
    # classes; the regime study's results are there).
    (
        "Text evidence (captions)",
        "text_sim",
        ["data.side_captions=true", "negatives.text_threshold=0.8", _START],
    ),
    ("Oracle (labels)", "oracle", [_START]),
]

# The image-text block: CLIP-style SogCLR on the SYNTHETIC colour x garment set, where the
# images of a class share near-identical reports among near-miss reports (tinted_clip; regime
# it_tint_tpl of docs/experiments/fn_regimes.md: the configuration of its seed-0 runs). Settings
# as chosen on the study's validation split; every detector masks from epoch 2 (0-based).
_IT_START = "negatives.start_epoch=2"
IMAGE_TEXT_METHODS: list[tuple[str, str, list[str]]] = [
    ("CLIP-style SogCLR (no filtering)", "none", []),
    (
        "GloFND",
        "glofnd",
        [
            "negatives.alpha=0.05",
            _IT_START,
            "negatives.update_start_epoch=1",
            "negatives.glofnd.init=batch_quantile",
            "negatives.glofnd.moment_init=binomial",
            "negatives.glofnd.beta1=0.5",
        ],
    ),
    ("Text evidence (reports)", "text_sim", ["negatives.text_threshold=0.8", _IT_START]),
    ("Oracle (labels)", "oracle", [_IT_START]),
]

QUICK = [
    "train.epochs=2",
    "data.train_size=2048",
    "data.test_size=1000",
    "train.max_steps=16",
    "eval.probe_seeds=1",
    # filter in the second (last, complete: 2 x 8 steps) epoch so the smoke run exercises every
    # detector and the summary's last-epoch detection scores are those of a filtered epoch
    "negatives.update_start_epoch=0",
    "negatives.start_epoch=1",
]


def _fmt(value: Any, pct: bool = True) -> str:
    if value is None or value != value:  # missing or NaN (e.g. precision when nothing removed)
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.2f}"


def _probe(summary: dict[str, Any], key: str) -> Any:
    entry = summary.get("linear_probe", {}).get(key)
    return entry.get("mean") if isinstance(entry, dict) else entry


_Column = tuple[str, Callable[[dict[str, Any]], Any]]
#: accuracy columns (header, value from a run summary) of the two blocks' tables
IMAGE_COLUMNS: list[_Column] = [
    ("LP 100%", lambda s: _probe(s, "100%")),
    ("LP 10%", lambda s: _probe(s, "10%")),
    ("LP 1%", lambda s: _probe(s, "1%")),
    ("kNN", lambda s: s.get("knn", {}).get("accuracy")),
]
TEXT_COLUMNS: list[_Column] = [
    ("zero-shot", lambda s: s.get("zero_shot", {}).get("accuracy")),
    ("LP 10%", lambda s: _probe(s, "10%")),
]


def _table(rows: list[tuple[str, dict[str, Any]]], columns: list[_Column]) -> str:
    """A Markdown table: one row per model, ``columns`` then detection quality, in percent."""
    head = ["model", *(name for name, _ in columns), "FN precision", "FN recall", "removed"]
    lines = ["| " + " | ".join([*head, "train s"]) + " |", "|---" * (len(head) + 1) + "|"]
    for label, s in rows:
        fn = dict(s.get("fn_detection", {}))
        if not fn.get("removed_fraction"):  # nothing removed: detection scores are undefined
            fn = {}
        detection = [fn.get(k) for k in ("precision", "recall", "removed_fraction")]
        cells = [_fmt(v) for v in [*(get(s) for _, get in columns), *detection]]
        seconds = f"{s['train_seconds']:.0f}" if "train_seconds" in s else "-"
        lines.append("| " + " | ".join([label, *cells, seconds]) + " |")
    return "\n".join(lines)


def results_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The image-image block's table: linear probe (100/10/1% labels) and kNN accuracy."""
    return _table(rows, IMAGE_COLUMNS)


def text_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The image-text block's table: zero-shot and 10%-label probe accuracy."""
    return _table(rows, TEXT_COLUMNS)


def _quick(detector: str) -> list[str]:
    """:data:`QUICK` less the shared ``negatives.*`` keys ``detector`` does not read (refused)."""
    read = NegativesConfig.keys_read_by(detector) or frozenset()
    return [o for o in QUICK if not o.startswith("negatives.") or o.split("=")[0][10:] in read]


def run_demo(output_dir: Path, quick: bool = False, methods: list[str] | None = None) -> str:
    """Train every available demo method of both blocks, print and write the comparison tables.

    Block 1 (image-image): SimCLR on Fashion-MNIST, :data:`DEMO_METHODS`, with the references.
    Block 2 (image-text): CLIP-style SogCLR on the SYNTHETIC colour x garment set,
    :data:`IMAGE_TEXT_METHODS`, in ``output_dir / "image_text"``. ``methods`` (detector names)
    keeps only those rows in both blocks. Returns the printed text (tables and notes).
    """
    from debiascl.train import trainer as _trainer  # noqa: F401  (registers every detector)

    output_dir.mkdir(parents=True, exist_ok=True)
    available = set(DETECTORS.names())

    def chosen(block: list[tuple[str, str, list[str]]]) -> list[tuple[str, str, list[str]]]:
        return [m for m in block if m[1] in available and (methods is None or m[1] in methods)]

    start = time.perf_counter()
    image_methods, text_methods = chosen(DEMO_METHODS), chosen(IMAGE_TEXT_METHODS)
    total = len(image_methods) + len(text_methods)
    rows = _train_block("fmnist_simclr", image_methods, output_dir, quick, 0, total)
    references: dict[str, Any] = {}
    for _, summary in rows:
        references.update(summary.pop("references", {}))
    text_dir = output_dir / "image_text"
    text_rows = _train_block(
        "tinted_clip", text_methods, text_dir, quick, len(image_methods), total
    )
    ref_rows = [(f"reference: {name}", s) for name, s in references.items()]
    kind = "quick smoke run" if quick else "CPU demo"
    parts = []
    if rows:
        parts += [results_table(ref_rows + rows), f"Fashion-MNIST (image-image), {kind}; seed 0."]
    if text_rows:
        parts += [
            text_table(text_rows),
            f"SYNTHETIC colour x garment image-text set (near-identical reports within a class), "
            f"{kind}; seed 0.",
        ]
    parts.append(f"Total {time.perf_counter() - start:.0f} s. Accuracies in %.")
    text = "\n\n".join(parts)
    print("\n" + text)
    atomic_write_text(output_dir / "results.md", text + "\n")
    results = {"references": references, "methods": dict(rows), "image_text": dict(text_rows)}
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2, default=str))
    if image_methods:
        _html_report([output_dir / d for _, d, _ in image_methods], output_dir / "report.html")
    if text_methods:
        _html_report([text_dir / d for _, d, _ in text_methods], text_dir / "report.html")
    return text


def _train_block(
    config: str,
    block: list[tuple[str, str, list[str]]],
    output_dir: Path,
    quick: bool,
    done: int,
    total: int,
) -> list[tuple[str, dict[str, Any]]]:
    """Train each (label, detector, overrides) of ``block`` on ``config``; (label, summary).

    Where the trainer shows no progress bar (stderr is not a terminal: CI logs, ``| tee``,
    nohup), prints one line per finished epoch instead.
    """
    from debiascl.train.trainer import Trainer, progress_enabled

    rows = []
    for i, (label, detector, overrides) in enumerate(block):
        # a demo re-run replaces its earlier runs; only the first run computes the references
        extra = [f"negatives.name={detector}", f"name={detector}", "checkpoint.overwrite=true"]
        if i > 0:
            extra.append("eval.references=false")
        cfg = load_config(config, [*extra, *overrides, *(_quick(detector) if quick else [])])
        print(f"[{done + i + 1}/{total}] training {label} ...", flush=True)
        trainer = Trainer(cfg, run_dir=output_dir / detector)
        if not progress_enabled():
            trainer.on_epoch = _epoch_line(f"[{done + i + 1}/{total}] {label}", cfg.train.epochs)
        rows.append((label, trainer.fit()))
    return rows


def _epoch_line(prefix: str, epochs: int) -> Callable[[dict[str, Any]], None]:
    """Prints ``PREFIX epoch E/EPOCHS loss L (S s)`` for an epoch record, flushed."""

    def show(record: dict[str, Any]) -> None:
        loss, seconds = record.get("loss", math.nan), record.get("epoch_seconds", math.nan)
        then = ", evaluating ..." if record["epoch"] == epochs else ""
        print(
            f"{prefix} epoch {record['epoch']}/{epochs} loss {loss:.3f} ({seconds:.0f} s){then}",
            flush=True,
        )

    return show


def _html_report(run_dirs: list[Path], out: Path) -> None:
    """Write the HTML report of the demo runs and print its path (a note without matplotlib)."""
    from debiascl.errors import DebiasclError
    from debiascl.report.html import write_report

    try:
        print(f"report: {write_report(run_dirs, out)}")
    except DebiasclError as err:  # the report extra is not installed
        print(f"no HTML report: {err}")
