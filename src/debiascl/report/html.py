"""``debiascl report RUN_DIR ... -o report.html``: one self-contained HTML page comparing runs.

Plots are PNG images embedded as base64 data URIs and the page has inline CSS and no scripts, so
it opens offline, from an e-mail attachment or a CI artifact. Runs whose configs differ only in
seed (and name / output directory) form one setting; results are shown as mean ± standard
deviation over its seeds with the number of seeds. A section whose data no run has is replaced
by a one-line note, never an empty plot.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path

from debiascl import __version__
from debiascl.atomic import atomic_write_text
from debiascl.errors import DataError
from debiascl.report import audit_sections as audit
from debiascl.report import sections as base
from debiascl.report.plots import require_matplotlib
from debiascl.report.runs import RunGroup, group_runs, load_run_data, unique_labels
from debiascl.report.sections import Section

SectionFn = Callable[[Sequence[RunGroup], Sequence[str]], Section]
SECTIONS: tuple[SectionFn, ...] = (
    base.runs_section,
    base.config_section,
    base.results_section,
    base.curves_section,
    base.detection_section,
    base.threshold_section,
    audit.eta_section,
    audit.fairness_section,
    audit.embedding_section,
    audit.removed_pairs_section,
)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em;
       color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; margin-top: 1.6em; }
.meta { color: #666; }
nav ul { columns: 2; padding-left: 1.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; margin: 0.4em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 0.5em; } .grid img { max-width: 49%; }
.note { color: #8a5a00; background: #fff7e0; border-left: 3px solid #e0a800; padding: 0.3em 0.7em; }
.thumb { image-rendering: pixelated; width: 96px; height: 96px; border: 1px solid #ccc; }
.pair td { vertical-align: middle; }
"""


def page(title: str, subtitle: str, body: str) -> str:
    """A complete HTML document with the report's inline CSS."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="meta">{escape(subtitle)}</p>{body}</body></html>\n'
    )


def render_report(run_dirs: Sequence[Path], projection: str = "pca") -> str:
    """The HTML text of the report over ``run_dirs`` (finished runs of ``debiascl train``).

    Raises:
        DataError: no run given, or a directory is not a finished run.
        DebiasclError: matplotlib is not installed (the ``report`` extra).
    """
    if not run_dirs:
        raise DataError("no run directory given; pass one or more directories of finished runs")
    require_matplotlib()
    runs = [load_run_data(Path(d)) for d in run_dirs]
    groups = group_runs(runs)
    labels = unique_labels(groups)
    sections: list[Section] = []
    for fn in SECTIONS:
        if fn is audit.embedding_section:
            sections.append(audit.embedding_section(groups, labels, projection))
        else:
            sections.append(fn(groups, labels))
    toc = "".join(
        f'<li><a href="#{s.id}">{escape(s.title)}</a>{" (no data)" if s.missing else ""}</li>'
        for s in sections
    )
    body = f"<nav><ul>{toc}</ul></nav>" + "".join(
        f'<section id="{s.id}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections
    )
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (
        f"{len(runs)} run(s) in {len(groups)} setting(s); debiascl {__version__}; written {when}"
    )
    return page("debiascl report", subtitle, body)


def write_report(run_dirs: Sequence[Path], out: Path, projection: str = "pca") -> Path:
    """Render the report and write it atomically to ``out``; returns ``out``."""
    out = Path(out)
    atomic_write_text(out, render_report(run_dirs, projection))
    return out
