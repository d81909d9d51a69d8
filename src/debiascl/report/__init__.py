"""Reports over finished runs (aggregation over seeds)."""

from debiascl.report.aggregate import aggregate_runs, markdown_table

__all__ = ["aggregate_runs", "markdown_table"]
