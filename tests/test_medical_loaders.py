"""Medical manifests on fixtures generated here: CheXpert Plus, MIMIC-CXR-JPG, DICOM, 5x200."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cli_helpers import write_dicom
from debiascl.data.dicom import read_dicom
from debiascl.data.images import register_dicom_reader
from debiascl.data.manifest import ManifestDataset
from debiascl.data.medical import (
    balanced_test_set,
    extract_sections,
    label_codes,
    load_chexpert_plus,
    load_mimic_cxr,
    main,
    mimic_image_path,
    normalise_race,
    report_text,
    write_manifest,
)
from debiascl.errors import DataError

REPORT = """FINAL REPORT
EXAMINATION: CHEST (PA AND LAT)

INDICATION: Cough.

FINDINGS:
  Heart size is normal.  No pleural
  effusion.

IMPRESSION: No acute cardiopulmonary process.
"""


def _vals(series):
    return [None if pd.isna(v) else v for v in series]


def test_sections_and_report_text():
    sec = extract_sections(REPORT)
    assert sec["findings"] == "Heart size is normal. No pleural effusion."
    assert sec["impression"] == "No acute cardiopulmonary process."
    assert sec["indication"] == "Cough."
    assert "final report" in sec["preamble"].lower()
    assert report_text(REPORT) == (
        "FINDINGS: Heart size is normal. No pleural effusion. "
        "IMPRESSION: No acute cardiopulmonary process."
    )
    assert report_text(REPORT, ("impression",)) == "IMPRESSION: No acute cardiopulmonary process."
    assert report_text("no headers here") == "no headers here"


def test_label_policies():
    raw = [1.0, 0.0, -1.0, None, 1]
    assert label_codes(raw).tolist() == [1, 0, -1, 0, 1]
    assert label_codes(raw, uncertain="ones", blank="ignore").tolist() == [1, 0, 1, -1, 1]
    assert label_codes(raw, uncertain="zeros").tolist() == [1, 0, 0, 0, 1]
    with pytest.raises(DataError, match="1, 0, -1 or blank"):
        label_codes([2.0])


def test_race_normalisation():
    assert normalise_race("WHITE - RUSSIAN") == "White"
    assert normalise_race("BLACK/AFRICAN AMERICAN") == "Black"
    assert normalise_race("HISPANIC/LATINO - PUERTO RICAN") == "Hispanic/Latino"
    assert normalise_race("White", "Hispanic/Latino") == "Hispanic/Latino"
    assert normalise_race("White", "Non-Hispanic/Non-Latino") == "White"
    assert normalise_race("UNABLE TO OBTAIN") is None
    assert normalise_race("Native Hawaiian or Other Pacific Islander") == "Other"


def _png(path, value, bits=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        Image.fromarray(np.full((12, 10), value, dtype=np.uint16)).save(path)
    else:
        Image.fromarray(np.full((12, 10), value, dtype=np.uint8), mode="L").save(path)


def test_chexpert_plus_manifest_roundtrip(tmp_path):
    rows = []
    for i in range(6):
        rel = f"train/patient{i // 2:05d}/study1/view{i}_frontal.png"
        _png(tmp_path / rel, 20 * i, bits=16 if i == 0 else 8)
        rows.append(
            {
                "path_to_image": rel,
                "frontal_lateral": "Frontal" if i != 5 else "Lateral",
                "sex": ["Female", "Male"][i % 2],
                "race": [
                    "White",
                    "Black or African American",
                    "Asian",
                    "Unknown",
                    "White",
                    "Other",
                ][i],
                "ethnicity": "Hispanic/Latino" if i == 4 else "Non-Hispanic/Non-Latino",
                "age": 35 + 10 * i,
                "section_findings": "Lungs are clear." if i % 2 else None,
                "section_impression": f"Impression {i}.",
                "Cardiomegaly": [1.0, 0.0, -1.0, None, 1.0, 0.0][i],
                "Edema": [0.0, 1.0, None, None, -1.0, 1.0][i],
            }
        )
    src = tmp_path / "df_chexpert_plus.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    m = load_chexpert_plus(src, frontal_only=True, uncertain="ignore")
    assert len(m) == 5
    assert m["subject_id"].tolist() == ["patient00000"] * 2 + ["patient00001"] * 2 + [
        "patient00002"
    ]
    assert m["sex"].tolist() == ["F", "M", "F", "M", "F"]
    assert _vals(m["race"])[:4] == ["White", "Black", "Asian", None]
    assert m["race"].iloc[4] == "Hispanic/Latino"
    assert m["age_group"].tolist() == ["<40", "40-59", "40-59", "60-79", "60-79"]
    assert m["Cardiomegaly"].tolist() == [1, 0, -1, 0, 1]
    assert m["Edema"].tolist() == [0, 1, 0, 0, -1]
    assert m["text"].iloc[0] == "IMPRESSION: Impression 0."
    assert m["text"].iloc[1] == "FINDINGS: Lungs are clear. IMPRESSION: Impression 1."

    out = write_manifest(m.assign(label=m["Cardiomegaly"].clip(lower=0)), tmp_path / "m.csv")
    ds = ManifestDataset(
        out,
        text_column="text",
        label_column="label",
        attribute_columns=["sex", "race"],
        channels=1,
        image_size=8,
    )
    item = ds[0]
    assert item["image"].shape == (1, 8, 8) and item["image"].dtype == torch.uint8
    assert ds.attr_vocab["sex"] == {"F": 0, "M": 1}
    assert item["attrs"].tolist() == [0, ds.attr_vocab["race"]["White"]]
    assert ds[3]["attrs"][1].item() == -1  # race unknown -> missing
    assert ds[2]["image"].float().mean().item() == pytest.approx(40, abs=1)


def test_chexpert_separate_labels_and_demographics(tmp_path):
    man = pd.DataFrame(
        {
            "Path": ["a/patient00001/x.jpg", "a/patient00002/y.jpg"],
            "report": [REPORT, "IMPRESSION: effusion."],
        }
    )
    labels = pd.DataFrame(
        {"Path": ["a/patient00002/y.jpg", "a/patient00001/x.jpg"], "Pleural Effusion": [1.0, 0.0]}
    )
    demo = pd.DataFrame(
        {
            "PATIENT": ["patient00001", "patient00002"],
            "GENDER": ["Male", "Female"],
            "PRIMARY_RACE": ["White", "Asian"],
            "ETHNICITY": ["Non-Hispanic", None],
            "AGE_AT_CXR": [50, 90],
        }
    )
    m = load_chexpert_plus(man, labels=labels, demographics=demo)
    assert m["Pleural Effusion"].tolist() == [0, 1]
    assert m["sex"].tolist() == ["M", "F"]
    assert m["race"].tolist() == ["White", "Asian"]
    assert m["age_group"].tolist() == ["40-59", "80+"]
    assert m["text"].iloc[1] == "IMPRESSION: effusion."
    with pytest.raises(DataError, match="no row in the labels table"):
        load_chexpert_plus(man, labels=labels.iloc[:1])
    with pytest.raises(DataError, match="no image path column"):
        load_chexpert_plus(man.rename(columns={"Path": "file"}))


def _mimic_tables(tmp_path):
    meta = pd.DataFrame(
        {
            "dicom_id": ["d1", "d2", "d3", "d4"],
            "subject_id": [10000032, 10000032, 11000001, 12000002],
            "study_id": [50000001, 50000002, 50000003, 50000004],
            "ViewPosition": ["PA", "LATERAL", "AP", "PA"],
        }
    )
    lab = pd.DataFrame(
        {
            "subject_id": [10000032, 10000032, 11000001, 12000002],
            "study_id": [50000001, 50000002, 50000003, 50000004],
            "Atelectasis": [1.0, None, -1.0, 0.0],
            "Edema": [None, 1.0, 1.0, None],
        }
    )
    pat = pd.DataFrame(
        {
            "subject_id": [10000032, 11000001, 12000002],
            "gender": ["F", "M", "F"],
            "anchor_age": [52, 71, 30],
        }
    )
    adm = pd.DataFrame(
        {
            "subject_id": [10000032, 10000032, 10000032, 11000001, 12000002],
            "race": ["WHITE", "WHITE", "BLACK/AFRICAN AMERICAN", "UNKNOWN", "ASIAN - CHINESE"],
        }
    )
    rdir = tmp_path / "reports"
    for s, t in [
        (10000032, 50000001),
        (10000032, 50000002),
        (11000001, 50000003),
        (12000002, 50000004),
    ]:
        f = rdir / "files" / f"p{str(s)[:2]}" / f"p{s}" / f"s{t}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"FINDINGS: study {t}.\nIMPRESSION: ok.\n")
    return meta, lab, pat, adm, rdir


def test_mimic_join(tmp_path):
    meta, lab, pat, adm, rdir = _mimic_tables(tmp_path)
    m = load_mimic_cxr(meta, lab, pat, adm, reports=rdir)
    assert len(m) == 3  # the lateral view is dropped
    assert m["path"].iloc[0] == "files/p10/p10000032/s50000001/d1.jpg"
    assert m["path"].iloc[0] == mimic_image_path(10000032, 50000001, "d1")
    assert m["sex"].tolist() == ["F", "M", "F"]
    assert m["age"].tolist() == [52, 71, 30]
    assert _vals(m["race"]) == ["White", None, "Asian"]  # majority over admissions; UNKNOWN
    assert m["race_conflict"].tolist() == [True, False, False]
    assert m["Atelectasis"].tolist() == [1, -1, 0]
    assert m["Edema"].tolist() == [0, 1, 0]
    assert m["text"].iloc[1] == "FINDINGS: study 50000003. IMPRESSION: ok."
    reports = pd.DataFrame(
        {"study_id": [50000001, 50000003, 50000004], "report": ["IMPRESSION: a."] * 3}
    )
    m2 = load_mimic_cxr(meta, lab, pat, adm, reports=reports)
    assert m2["text"].tolist() == ["IMPRESSION: a."] * 3
    with pytest.raises(DataError, match="lacks columns"):
        load_mimic_cxr(meta.drop(columns="study_id"), lab, pat)


def test_dicom_reader_and_registry(tmp_path):
    pydicom = pytest.importorskip("pydicom")  # the 'dicom' extra; installed in the test env
    ramp = np.tile(np.arange(0, 4096, 256, dtype=np.uint16), (4, 1))  # (4, 16), 0..3840
    write_dicom(tmp_path / "a.dcm", ramp)
    x = read_dicom(tmp_path / "a.dcm")
    assert x.shape == (4, 16) and x.dtype == np.float32
    assert np.allclose(x[0], (ramp[0] - 0) / 3840.0, atol=1e-6)  # min-max without a window
    write_dicom(tmp_path / "b.dcm", ramp, photometric="MONOCHROME1")
    assert np.allclose(read_dicom(tmp_path / "b.dcm"), 1 - x, atol=1e-6)
    write_dicom(tmp_path / "c.dcm", ramp, window=(2048, 1024), slope=1.0, intercept=0.0)
    c = read_dicom(tmp_path / "c.dcm")
    ref = np.clip((ramp.astype(float) - (2048 - 0.5)) / (1024 - 1) + 0.5, 0, 1)
    assert np.allclose(c, ref, atol=1e-6)
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom")
    with pytest.raises(DataError, match="cannot read DICOM"):
        read_dicom(tmp_path / "bad.dcm")

    register_dicom_reader()
    pd.DataFrame({"path": ["a.dcm", "b.dcm"], "sex": ["F", "M"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    ds = ManifestDataset(tmp_path / "m.csv", attribute_columns=["sex"], image_size=None)
    img = ds[0]["image"]
    assert img.shape == (1, 4, 16)
    assert img[0, 0].tolist() == np.rint(x[0] * 255).astype(int).tolist()
    assert pydicom is not None


def _balanced_fixture(n=400, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
            "race": rng.choice(["Asian", "Black", "White", None], n, p=[0.3, 0.3, 0.3, 0.1]),
        }
    )
    for f in ("Atelectasis", "Cardiomegaly", "Edema"):
        df[f] = rng.choice([1, 0, -1], n, p=[0.4, 0.5, 0.1])
    return df


def test_balanced_test_set():
    df = _balanced_fixture()
    findings = ["Atelectasis", "Cardiomegaly", "Edema"]
    out, summary = balanced_test_set(df, findings, ["sex"], 20, seed=1)
    assert len(out) == 60 and out["path"].is_unique
    assert summary["counts"]["Edema"] == {"sex=F": 10, "sex=M": 10}
    for f in findings:
        sub = out[out["label"] == f]
        assert (sub[f] == 1).all()
        others = [g for g in findings if g != f]
        assert (sub[others] != 1).all().all()  # exclusive
        assert sub["sex"].value_counts().to_dict() == {"F": 10, "M": 10}
    again, _ = balanced_test_set(df, findings, ["sex"], 20, seed=1)
    assert again.equals(out)
    inter, s2 = balanced_test_set(df, findings[:1], ["sex", "race"], 13, seed=0)
    assert len(s2["groups"]) == 6 and inter["race"].notna().all()
    assert sorted(inter["group"].value_counts().tolist()) == [2, 2, 2, 2, 2, 3]
    with pytest.raises(DataError, match="not enough eligible images"):
        balanced_test_set(df, findings, ["sex"], 400)
    with pytest.raises(DataError, match="at least 2"):
        balanced_test_set(df.assign(sex="F"), findings, ["sex"], 10)
    with pytest.raises(DataError, match="lacks columns"):
        balanced_test_set(df, findings, ["ethnicity"], 10)


def test_balance_command_line(tmp_path, capsys):
    df = _balanced_fixture()
    write_manifest(df, tmp_path / "m.parquet")
    rc = main(
        [
            "balance",
            "--manifest",
            str(tmp_path / "m.parquet"),
            "--out",
            str(tmp_path / "t.csv"),
            "--findings",
            "Edema",
            "--groups",
            "sex",
            "--n",
            "10",
        ]
    )
    assert rc == 0
    t = pd.read_csv(tmp_path / "t.csv")
    assert len(t) == 10 and set(t["label"]) == {"Edema"}
    rc = main(
        [
            "balance",
            "--manifest",
            str(tmp_path / "m.parquet"),
            "--out",
            str(tmp_path / "t.csv"),
            "--findings",
            "Edema",
            "--n",
            "100000",
        ]
    )
    assert rc == 2 and "not enough" in capsys.readouterr().err
