"""Chest X-ray manifests: CheXpert Plus and MIMIC-CXR-JPG layouts, reports, balanced test sets.

Field normalisation (reports, demographics, labels) is in :mod:`debiascl.data.medical_fields`,
the balanced test set in :mod:`debiascl.data.medical_balance`; both are re-exported here.

The loaders turn the public releases' tables into one **normalised manifest** (a pandas
DataFrame, written with :func:`write_manifest`) that
:class:`debiascl.data.manifest.ManifestDataset` reads:

========== =============================================================================
column     meaning
========== =============================================================================
path       image path (relative to the image root, or absolute)
text       report text: FINDINGS + IMPRESSION sections (see :func:`report_text`)
subject_id patient identifier (for patient-level splits)
sex        ``"F"`` / ``"M"`` (empty = missing)
race       coarse group: White, Black, Asian, Hispanic/Latino, Other (empty = missing)
age        age in years (float); ``age_group`` its bin (``"<40"``, ``"40-59"``, ...)
<finding>  one column per finding: 1 positive, 0 negative, -1 uncertain/ignored
========== =============================================================================

Label conventions of the CheXpert labeler (also used by MIMIC-CXR-JPG): 1.0 positive, 0.0
negative, -1.0 uncertain, blank = not mentioned. ``uncertain`` and ``blank`` choose how those
become 1/0/-1 (``"ignore"`` keeps -1, which the fairness metrics skip per finding).

Real data never ships with debiascl (licences: Stanford AIMI for CheXpert Plus, PhysioNet
credentialed access for MIMIC); the tests build small fixtures in the same layouts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from debiascl.data.manifest import read_table
from debiascl.data.medical_balance import balanced_test_set
from debiascl.data.medical_fields import (
    AGE_BINS,
    CHEXPERT_5X200,
    CHEXPERT_FINDINGS,
    Policy,
    age_group,
    extract_sections,
    label_codes,
    normalise_race,
    normalise_sex,
    report_text,
)
from debiascl.errors import DataError

__all__ = [
    "AGE_BINS",
    "CHEXPERT_5X200",
    "CHEXPERT_FINDINGS",
    "Policy",
    "age_group",
    "balanced_test_set",
    "extract_sections",
    "label_codes",
    "load_chexpert_plus",
    "load_mimic_cxr",
    "main",
    "mimic_image_path",
    "normalise_race",
    "normalise_sex",
    "report_text",
    "write_manifest",
]


# ----------------------------------------------------------------------------- loaders
def _pick(df: Any, candidates: Sequence[str], what: str, required: bool = True) -> str | None:
    lower = {str(c).lower(): c for c in df.columns}
    for c in candidates:
        if c in df.columns:
            return c
        if c.lower() in lower:
            return lower[c.lower()]
    if required:
        raise DataError(
            f"the table has no {what} column (looked for {list(candidates)}; have "
            f"{list(map(str, df.columns))[:20]}); pass its name explicitly"
        )
    return None


def _findings_frame(df: Any, findings: Sequence[str], uncertain: Policy, blank: Policy) -> Any:
    import pandas as pd

    missing = [f for f in findings if f not in df.columns]
    if missing:
        raise DataError(
            f"finding columns {missing} are missing from the labels table; pass findings= "
            "with the columns your table has"
        )
    return pd.DataFrame({f: label_codes(df[f], uncertain, blank) for f in findings}, index=df.index)


def _finish(df: Any, findings: Sequence[str]) -> Any:
    cols = ["path", "text", "subject_id", "sex", "race", "age", "age_group", *findings]
    extra = [c for c in df.columns if c not in cols]
    return df[[c for c in cols if c in df.columns] + extra].reset_index(drop=True)


def load_chexpert_plus(
    manifest: str | Path | Any,
    *,
    labels: str | Path | Any | None = None,
    demographics: str | Path | Any | None = None,
    findings: Sequence[str] | None = None,
    image_column: str | None = None,
    report_column: str | None = None,
    sections: Sequence[str] = ("findings", "impression"),
    uncertain: Policy = "ignore",
    blank: Policy = "zeros",
    frontal_only: bool = False,
) -> Any:
    """Normalised manifest from a CheXpert Plus style table.

    Args:
        manifest: the main table (e.g. ``df_chexpert_plus_240401.csv``) or a DataFrame, with an
            image path (``path_to_image`` / ``Path``), report sections (``section_findings``,
            ``section_impression``) or a full ``report`` column, and demographics (``sex``,
            ``race``, ``ethnicity``, ``age``) when present.
        labels: optional table of finding labels joined on the image path (e.g. CheXbert labels
            with a ``path_to_image`` column); by default the finding columns of ``manifest``.
        demographics: optional per-patient table joined on the patient id (``patient_id`` /
            ``PATIENT``; CheXpert's demographics file has ``GENDER``, ``PRIMARY_RACE``,
            ``ETHNICITY``, ``AGE_AT_CXR``); its values replace the manifest's.
        findings: label columns to keep (default: the 14 CheXpert findings present).
        image_column, report_column: override the column detection.
        sections: report sections that form ``text``.
        uncertain, blank: label policies (see :func:`label_codes`).
        frontal_only: keep frontal views only (``frontal_lateral`` / ``Frontal/Lateral``).
    """
    import pandas as pd

    df = manifest.copy() if isinstance(manifest, pd.DataFrame) else read_table(manifest)
    img = image_column or _pick(df, ("path_to_image", "Path", "path"), "image path")
    out = pd.DataFrame({"path": df[img].astype(str)}, index=df.index)
    if frontal_only:
        view = _pick(df, ("frontal_lateral", "Frontal/Lateral"), "frontal/lateral view")
        keep = df[view].astype(str).str.lower().str.startswith("frontal")
        df, out = df[keep], out[keep]
    # report text: explicit sections, else extraction from the full report
    sec_cols = {s: _pick(df, (f"section_{s}",), s, required=False) for s in sections}
    if report_column is None and all(c is not None for c in sec_cols.values()):
        parts = []
        for s, col in sec_cols.items():
            vals = df[col].where(df[col].notna(), "").astype(str).str.split().str.join(" ")
            parts.append(np.where(vals != "", f"{s.upper()}: " + vals, ""))
        out["text"] = [" ".join(p for p in row if p) for row in zip(*parts, strict=True)]
    else:
        rep = report_column or _pick(df, ("report", "Report", "text"), "report", required=False)
        if rep is not None:
            out["text"] = [report_text(r, sections) for r in df[rep]]
    pid = _pick(df, ("patient_id", "PATIENT", "subject_id"), "patient id", required=False)
    if pid is None:  # CheXpert paths carry the patient: train/patient00001/study1/...
        found = df[img].astype(str).str.extract(r"(patient\d+)", expand=False)
        if found.notna().any():
            out["subject_id"] = found
    else:
        out["subject_id"] = df[pid].astype(str)
    demo = df
    if demographics is not None:
        d = demographics if isinstance(demographics, pd.DataFrame) else read_table(demographics)
        dpid = _pick(d, ("patient_id", "PATIENT", "subject_id"), "patient id")
        if "subject_id" not in out:
            raise DataError("cannot join demographics: the manifest has no patient id column")
        d = d.drop_duplicates(dpid).set_index(d[dpid].astype(str).rename("subject_id"))
        demo = d.reindex(out["subject_id"]).set_axis(out.index)
    sex = _pick(demo, ("sex", "GENDER", "gender"), "sex", required=False)
    race = _pick(demo, ("race", "PRIMARY_RACE"), "race", required=False)
    eth = _pick(demo, ("ethnicity", "ETHNICITY"), "ethnicity", required=False)
    age = _pick(demo, ("age", "AGE_AT_CXR", "Age", "anchor_age"), "age", required=False)
    if sex:
        out["sex"] = [normalise_sex(v) for v in demo[sex]]
    if race:
        ev = demo[eth] if eth else [None] * len(demo)
        out["race"] = [normalise_race(r, e) for r, e in zip(demo[race], ev, strict=True)]
    if age:
        out["age"] = pd.to_numeric(demo[age], errors="coerce")
        out["age_group"] = [age_group(a) for a in out["age"]]
    lab = df
    if labels is not None:
        lt = labels if isinstance(labels, pd.DataFrame) else read_table(labels)
        key = _pick(lt, ("path_to_image", "Path", "path"), "image path")
        lt = lt.drop_duplicates(key).set_index(lt[key].astype(str))
        absent = ~out["path"].isin(lt.index)
        if absent.any():
            raise DataError(
                f"{int(absent.sum())} images have no row in the labels table (e.g. "
                f"{out['path'][absent].iloc[0]}); use matching path columns"
            )
        lab = lt.loc[out["path"]].set_axis(out.index)
    if findings is None:
        findings = [f for f in CHEXPERT_FINDINGS if f in lab.columns]
    out = out.join(_findings_frame(lab, findings, uncertain, blank))
    return _finish(out, findings)


def mimic_image_path(subject_id: int, study_id: int, dicom_id: str, suffix: str = ".jpg") -> str:
    """MIMIC-CXR-JPG layout: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``."""
    s = str(int(subject_id))
    return f"files/p{s[:2]}/p{s}/s{int(study_id)}/{dicom_id}{suffix}"


def load_mimic_cxr(
    metadata: str | Path | Any,
    labels: str | Path | Any,
    patients: str | Path | Any,
    admissions: str | Path | Any | None = None,
    *,
    reports: str | Path | Any | None = None,
    findings: Sequence[str] | None = None,
    sections: Sequence[str] = ("findings", "impression"),
    uncertain: Policy = "ignore",
    blank: Policy = "zeros",
    views: Sequence[str] | None = ("PA", "AP"),
    suffix: str = ".jpg",
) -> Any:
    """Normalised manifest from MIMIC-CXR-JPG tables joined with MIMIC-IV demographics.

    Args:
        metadata: ``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id``, ``subject_id``, ``study_id``,
            ``ViewPosition``).
        labels: ``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv`` (``subject_id``,
            ``study_id``, finding columns), joined on (subject_id, study_id).
        patients: MIMIC-IV ``patients.csv`` (``subject_id``, ``gender``, ``anchor_age``),
            joined on subject_id.
        admissions: MIMIC-IV ``admissions.csv`` (``subject_id``, ``race`` or, in v1.0,
            ``ethnicity``); a patient's race is the most frequent known value over their
            admissions (``race_conflict`` marks patients with several).
        reports: optional folder of ``mimic-cxr-reports`` (``files/p10/p10000032/s5041.txt``) or
            a table with ``study_id`` and ``report`` (or ``text``) columns.
        views: keep these ``ViewPosition`` values (None keeps all).
        suffix: image file suffix (``.jpg``; ``.dcm`` for MIMIC-CXR DICOM).
    """
    import pandas as pd

    def table(x: Any) -> Any:
        return x.copy() if isinstance(x, pd.DataFrame) else read_table(x)

    meta, lab, pat = table(metadata), table(labels), table(patients)
    for name, t, cols in (
        ("metadata", meta, ("dicom_id", "subject_id", "study_id")),
        ("labels", lab, ("subject_id", "study_id")),
        ("patients", pat, ("subject_id",)),
    ):
        absent = [c for c in cols if c not in t.columns]
        if absent:
            raise DataError(f"the MIMIC {name} table lacks columns {absent}; check the file")
    if views is not None and "ViewPosition" in meta.columns:
        meta = meta[meta["ViewPosition"].isin(list(views))]
    df = meta.merge(lab, on=["subject_id", "study_id"], how="inner", validate="many_to_one")
    if findings is None:
        findings = [f for f in CHEXPERT_FINDINGS if f in lab.columns]
    out = pd.DataFrame(
        {
            "path": [
                mimic_image_path(s, t, d, suffix)
                for s, t, d in zip(df["subject_id"], df["study_id"], df["dicom_id"], strict=True)
            ],
            "subject_id": df["subject_id"].astype(np.int64).to_numpy(),
            "study_id": df["study_id"].astype(np.int64).to_numpy(),
        }
    )
    if reports is not None:
        out["text"] = _mimic_reports(reports, df, sections)
    pat = pat.drop_duplicates("subject_id").set_index("subject_id")
    p = pat.reindex(out["subject_id"])
    gcol = _pick(pat, ("gender", "sex"), "sex", required=False)
    if gcol:
        out["sex"] = [normalise_sex(v) for v in p[gcol]]
    acol = _pick(pat, ("anchor_age", "age"), "age", required=False)
    if acol:
        out["age"] = pd.to_numeric(p[acol], errors="coerce").to_numpy()
        out["age_group"] = [age_group(a) for a in out["age"]]
    if admissions is not None:
        adm = table(admissions)
        rcol = _pick(adm, ("race", "ethnicity"), "race")
        adm = adm.assign(_race=[normalise_race(v) for v in adm[rcol]]).dropna(subset=["_race"])
        counts = adm.groupby(["subject_id", "_race"]).size().reset_index(name="k")
        counts = counts.sort_values(["subject_id", "k", "_race"], ascending=[True, False, True])
        first = counts.drop_duplicates("subject_id").set_index("subject_id")["_race"]
        n_values = counts.groupby("subject_id").size()
        out["race"] = first.reindex(out["subject_id"]).to_numpy()
        out["race_conflict"] = (n_values.reindex(out["subject_id"]).fillna(0) > 1).to_numpy()
    out = out.join(_findings_frame(df.reset_index(drop=True), findings, uncertain, blank))
    return _finish(out, findings)


def _mimic_reports(reports: Any, df: Any, sections: Sequence[str]) -> list[str]:
    import pandas as pd

    if isinstance(reports, (str, Path)) and Path(reports).is_dir():
        root = Path(reports)
        texts = []
        for s, t in zip(df["subject_id"], df["study_id"], strict=True):
            sid = str(int(s))
            f = root / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{int(t)}.txt"
            if not f.is_file():
                raise DataError(f"report {f} does not exist; check the reports folder")
            texts.append(report_text(f.read_text(errors="replace"), sections))
        return texts
    rt = reports if isinstance(reports, pd.DataFrame) else read_table(reports)
    col = _pick(rt, ("report", "text"), "report")
    by_study = rt.drop_duplicates("study_id").set_index("study_id")[col]
    raw = by_study.reindex(df["study_id"])
    if raw.isna().any():
        raise DataError(
            f"{int(raw.isna().sum())} studies have no report in the reports table; "
            "give a table with every study_id"
        )
    return [report_text(r, sections) for r in raw]


def write_manifest(df: Any, path: str | Path) -> Path:
    """Write a manifest as ``.csv`` or ``.parquet`` (by suffix); empty cells stay empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    elif path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        raise DataError(f"manifest {path} must end in .csv or .parquet")
    return path


# ----------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m debiascl.data.medical balance --manifest m.csv --out test.csv ...``."""
    parser = argparse.ArgumentParser(prog="python -m debiascl.data.medical")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("balance", help="build a demographically balanced test set")
    b.add_argument("--manifest", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--findings", nargs="+", default=list(CHEXPERT_5X200))
    b.add_argument("--groups", nargs="+", default=["sex"])
    b.add_argument("--n", type=int, default=200, help="images per finding")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--non-exclusive", action="store_true")
    args = parser.parse_args(argv)
    import json

    try:
        df = read_table(args.manifest)
        out, summary = balanced_test_set(
            df,
            args.findings,
            args.groups,
            args.n,
            exclusive=not args.non_exclusive,
            seed=args.seed,
        )
        write_manifest(out, args.out)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
