"""``debiascl explore RUN_DIR``: look at the pairs a false-negative detector removed.

Reads the run's ``removed_pairs.csv`` (a uniform sample of removed pairs, see
:mod:`debiascl.negatives.removed_pairs`), rebuilds the run's training data from its saved
``config.yaml`` to fetch each sample's image, caption/report and class, and writes

* ``explorer.html``: one row per pair, most similar first: anchor and candidate side by side as
  thumbnails with their text, similarity, epoch and whether their labels agree. Self-contained
  (thumbnails are base64 PNG), no scripts.
* ``explorer.csv``: the same rows with the sample ids, for data curation (dropping duplicate
  images, merging repeated reports) in a spreadsheet or pandas.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from debiascl.atomic import atomic_write_text
from debiascl.errors import DataError
from debiascl.negatives.removed_pairs import FILE_NAME, read_removed_pairs, records_to_csv
from debiascl.report.html import page

EXPORT_COLUMNS = (
    "rank",
    "similarity",
    "epoch",
    "direction",
    "anchor_id",
    "candidate_id",
    "labels_agree",
    "anchor_label",
    "candidate_label",
    "anchor_text",
    "candidate_text",
)
THUMB_MAX = 128  # thumbnails larger than this (pixels) are downscaled


def thumbnail_png(image: Any) -> str:
    """Base64 PNG of a uint8 (C, H, W) or (H, W) image (1 or 3 channels), at most THUMB_MAX px."""
    from PIL import Image

    arr = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr[:3], 0, -1)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if max(img.size) > THUMB_MAX:
        img.thumbnail((THUMB_MAX, THUMB_MAX))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class SampleLookup:
    """Image, text and class of a training sample by its id, from the run's rebuilt data."""

    def __init__(self, run_dir: Path) -> None:
        from debiascl.compose import build_data
        from debiascl.config import load_run_config

        # a run saved by an older version is read in today's spelling
        cfg = load_run_config(run_dir / "config.yaml", ["checkpoint.resume=null"])
        bundle = build_data(cfg.data, cfg.seed)
        self.dataset = bundle.train
        self.class_names = bundle.class_names
        ids = self.dataset.ids.tolist()
        self.row_of = {int(i): r for r, i in enumerate(ids)}

    def get(self, sample_id: int) -> dict[str, Any] | None:
        row = self.row_of.get(int(sample_id))
        if row is None:
            return None
        item = self.dataset[row]
        if item is None:
            return None
        label = item.get("label", -1)
        name = (
            self.class_names[label]
            if self.class_names is not None and 0 <= label < len(self.class_names)
            else (str(label) if label >= 0 else "")
        )
        return {"image": item["image"], "text": item.get("text") or "", "label": name}


def _cell(sample: dict[str, Any] | None, sample_id: int, thumbs: dict[int, str]) -> str:
    if sample is None:
        return f"<td>id {sample_id}<br><i>not in the rebuilt training data</i></td>"
    if sample_id not in thumbs:
        thumbs[sample_id] = thumbnail_png(sample["image"])
    text = escape(sample["text"]) if sample["text"] else ""
    return (
        f'<td><img class="thumb" alt="sample {sample_id}" '
        f'src="data:image/png;base64,{thumbs[sample_id]}"><br>id {sample_id}'
        f"{' · ' + escape(sample['label']) if sample['label'] else ''}"
        f"{'<br><q>' + text + '</q>' if text else ''}</td>"
    )


def build_explorer(run_dir: Path, limit: int | None = None) -> tuple[str, str, int]:
    """(HTML page, CSV export, number of pairs) for a run directory.

    Raises:
        DataError: the run has no ``removed_pairs.csv`` (no detector removed anything, the run
            predates the explorer, or ``train.removed_pairs_sample=0``) or no ``config.yaml``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a run directory (no config.yaml)")
    pairs = read_removed_pairs(run_dir / FILE_NAME)
    if not pairs:
        raise DataError(
            f"{run_dir} has no removed pairs ({FILE_NAME} missing or empty): "
            + _why_no_pairs(run_dir)
        )
    pairs.sort(key=lambda p: -p["similarity"])
    if limit is not None:
        pairs = pairs[:limit]
    lookup = SampleLookup(run_dir)
    thumbs: dict[int, str] = {}
    rows_html, export = [], []
    for rank, p in enumerate(pairs, 1):
        a, c = lookup.get(p["anchor_id"]), lookup.get(p["candidate_id"])
        agree = {None: "-", 1: "yes", 0: "no"}[p["labels_agree"]]
        rows_html.append(
            f"<tr><td>{rank}</td><td>{p['similarity']:.4f}</td><td>{p['epoch']}</td>"
            f"<td>{escape(p['direction'])}</td><td>{agree}</td>"
            f"{_cell(a, p['anchor_id'], thumbs)}{_cell(c, p['candidate_id'], thumbs)}</tr>"
        )
        export.append(
            {
                **p,
                "rank": rank,
                "anchor_label": a["label"] if a else "",
                "candidate_label": c["label"] if c else "",
                "anchor_text": a["text"] if a else "",
                "candidate_text": c["text"] if c else "",
            }
        )
    agree_vals = [p["labels_agree"] for p in pairs if p["labels_agree"] is not None]
    summary = (
        f"<p>{len(pairs)} removed pairs (a uniform sample of all pairs removed in training), "
        "most similar first. "
        + (
            f"{100 * sum(agree_vals) / len(agree_vals):.1f}% share the class label. "
            if agree_vals
            else ""
        )
        + "Export: <code>explorer.csv</code> next to this page (sample ids, texts).</p>"
    )
    header = "".join(
        f"<th>{h}</th>"
        for h in ("#", "similarity", "epoch", "direction", "same label", "anchor", "candidate")
    )
    body = summary + (
        f'<table class="pair"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows_html)}</tbody></table>"
    )
    html = page("debiascl false-negative explorer", f"run: {run_dir}", body)
    return html, records_to_csv(export, EXPORT_COLUMNS), len(pairs)


def _why_no_pairs(run_dir: Path) -> str:
    """What to do about a run without removed pairs, from its saved config."""
    import yaml

    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        raw = {}
    detector = (raw.get("negatives") or {}).get("name", "none")
    sample = (raw.get("train") or {}).get("removed_pairs_sample", 1)
    if detector not in (None, "none") and sample:
        return (
            f"its detector (negatives.name={detector}) removed no negative pair while training "
            "(negatives/removed_fraction in metrics.jsonl; nothing is removed before "
            "negatives.start_epoch, and GloFND with init=one only once its thresholds fell); "
            "train longer or with negatives.glofnd.init=batch_quantile"
        )
    return (
        "train with a false-negative detector (negatives.name=glofnd|fnc|single|oracle) and "
        "train.removed_pairs_sample > 0"
    )


def write_explorer(
    run_dir: Path, out: Path | None = None, limit: int | None = None
) -> tuple[Path, Path]:
    """Write ``explorer.html`` (or ``out``) and the CSV beside it; returns both paths."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "explorer.html"
    html, csv_text, _ = build_explorer(run_dir, limit)
    csv_path = out.with_suffix(".csv")
    atomic_write_text(out, html)
    atomic_write_text(csv_path, csv_text)
    return out, csv_path
