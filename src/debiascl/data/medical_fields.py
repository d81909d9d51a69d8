"""Chest X-ray manifest fields: report sections, demographics (sex, race, age group) and
CheXpert-labeler label codes (see :mod:`debiascl.data.medical`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal

import numpy as np

from debiascl.errors import DataError
from debiascl.missing import as_object_column, missing_or_blank_mask

CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: The five findings of the CheXpert 5x200 zero-shot benchmark (Huang et al., GLoRIA, ICCV 2021).
CHEXPERT_5X200: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
AGE_BINS: tuple[float, ...] = (40.0, 60.0, 80.0)
Policy = Literal["ignore", "zeros", "ones"]

# ----------------------------------------------------------------------------- reports
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&()-]{2,40}):", re.MULTILINE)


def extract_sections(report: str) -> dict[str, str]:
    """Split a radiology report into its sections by upper-case ``HEADER:`` lines.

    Returns lower-case section names -> text (whitespace collapsed); text before the first
    header is under ``"preamble"``. ``"FINAL REPORT"`` style banners without a colon are kept
    in the preceding section.
    """
    if not isinstance(report, str):
        return {}
    out: dict[str, str] = {}
    matches = list(_HEADER.finditer(report))
    start = matches[0].start() if matches else len(report)
    pre = " ".join(report[:start].split())
    if pre:
        out["preamble"] = pre
    for m, nxt in zip(matches, [*matches[1:], None], strict=False):
        name = " ".join(m.group(1).lower().split())
        body = " ".join(report[m.end() : nxt.start() if nxt else len(report)].split())
        out[name] = f"{out[name]} {body}".strip() if name in out else body
    return out


def report_text(
    report: str, sections: Sequence[str] = ("findings", "impression"), fallback: bool = True
) -> str:
    """The named sections of a report joined in order (``"FINDINGS: ... IMPRESSION: ..."``).

    Without any of them, the whole report (whitespace collapsed) if ``fallback``, else "".
    """
    found = extract_sections(report)
    parts = [f"{s.upper()}: {found[s]}" for s in sections if found.get(s)]
    if parts:
        return " ".join(parts)
    return " ".join(str(report).split()) if fallback and isinstance(report, str) else ""


# ----------------------------------------------------------------------------- demographics
def normalise_sex(value: object) -> str | None:
    """``"F"``/``"M"`` from F, Female, FEMALE, M, Male...; None otherwise."""
    if not isinstance(value, str):
        return None
    v = value.strip().lower()
    if v in ("f", "female", "woman"):
        return "F"
    if v in ("m", "male", "man"):
        return "M"
    return None


_RACE_MISSING = ("unknown", "unable", "declined", "not specified", "patient refused", "other/unk")


def normalise_race(value: object, ethnicity: object = None) -> str | None:
    """Coarse race/ethnicity group from MIMIC-IV ``race`` or CheXpert ``race`` + ``ethnicity``.

    Hispanic/Latino (in either field) takes precedence, as in MIMIC-IV's combined coding; unknown,
    declined or unable-to-obtain values are missing (None).
    """
    texts = [str(v).strip().lower() for v in (value, ethnicity) if isinstance(v, str)]
    if any(
        ("hispanic" in t or "latino" in t) and "non-hispanic" not in t and "not hispanic" not in t
        for t in texts
    ):
        return "Hispanic/Latino"
    if not isinstance(value, str) or not value.strip():
        return None
    v = value.strip().lower()
    if any(k in v for k in _RACE_MISSING):
        return None
    if "white" in v:
        return "White"
    if "black" in v or "african" in v:
        return "Black"
    if "asian" in v:
        return "Asian"
    return "Other"


def age_group(age: object, bins: Sequence[float] = AGE_BINS) -> str | None:
    """``"<40"``, ``"40-59"``, ``"60-79"``, ``"80+"`` (for the default bins); None if unknown."""
    try:
        a = float(age)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not np.isfinite(a) or a < 0:
        return None
    edges = list(bins)
    if a < edges[0]:
        return f"<{edges[0]:g}"
    for lo, hi in pairwise(edges):
        if a < hi:
            return f"{lo:g}-{hi - 1:g}"
    return f"{edges[-1]:g}+"


def label_codes(values: Any, uncertain: Policy = "ignore", blank: Policy = "zeros") -> np.ndarray:
    """CheXpert-labeler values (1, 0, -1, blank) -> int64 codes 1 / 0 / -1 (ignored).

    Args:
        uncertain: what -1 becomes: ``"ignore"`` (-1), ``"zeros"`` (U-Zeros) or ``"ones"``
            (U-Ones; Irvin et al., CheXpert, AAAI 2019).
        blank: what a blank (not mentioned) becomes; ``"zeros"`` is the usual choice.
    """
    col = as_object_column(values)
    blank_cell = missing_or_blank_mask(col)  # every numpy/pandas marker and blank strings
    x = np.full(len(col), np.nan)
    bad = []
    for i in np.flatnonzero(~blank_cell):
        try:
            x[i] = float(col[i])
        except (TypeError, ValueError):
            bad.append(col[i])
    bad += [v for v in x[~blank_cell] if v == v and v not in (1.0, 0.0, -1.0)]
    if bad:
        raise DataError(
            f"finding labels must be 1, 0, -1 or blank; found {sorted(set(map(str, bad)))[:5]}"
        )
    to = {"ignore": -1, "zeros": 0, "ones": 1}
    out = np.where(x == 1.0, 1, 0).astype(np.int64)
    out[x == -1.0] = to[uncertain]
    out[np.isnan(x)] = to[blank]
    return out
