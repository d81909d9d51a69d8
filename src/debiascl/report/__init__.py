"""Reports over finished runs (aggregation over seeds)."""

from debiascl.report.aggregate import aggregate_runs, markdown_table, mean_std, metric_at

__all__ = ["aggregate_runs", "markdown_table", "mean_std", "metric_at"]
