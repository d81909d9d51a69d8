"""The results table of a run's evaluation (printed by ``debiascl train`` and ``debiascl eval``)."""

from __future__ import annotations

from typing import Any

from debiascl.eval.report import format_table

#: result path -> column title of the summary table
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
