"""Issue 10 items 12 and 17 through the CLI: blank label cells, DICOM manifests and folders,
a missing DICOM extra and a run whose every image is unreadable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cli_helpers import SMALL, cli, one_line_error, train_argv, write_dicom
from debiascl.negatives.diagnostics import DetectionStats
from debiascl.pairs import simclr_pairs
from debiascl.train import checkpoint as ckpt


def _png_manifest(root: Path, split: str, n: int, blanks: tuple[int, ...] = ()) -> Path:
    """n 8x8 PNGs, two classes by brightness, string labels; rows in ``blanks`` get no label."""
    rng = np.random.default_rng(len(split) + n)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = i % 2
        pixels = (rng.integers(0, 100, (8, 8)) + 150 * c).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{split}{i:03d}.png")
        rows.append({"path": f"img/{split}{i:03d}.png", "label": None if i in blanks else "ab"[c]})
    path = root / f"{split}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------ item 12: blank labels
def test_blank_label_cell_evaluates_the_labelled_rows_and_says_how_many_were_left_out(
    capsys, tmp_path
):
    train = _png_manifest(tmp_path / "data", "train", 48, blanks=(5, 30))
    test = _png_manifest(tmp_path / "data", "test", 24, blanks=(3,))
    assert ",\n" in train.read_text()  # a real blank cell in the CSV
    run = tmp_path / "run"
    code, out, err = cli(
        capsys,
        [
            "train",
            "digits_simclr",
            "--run-dir",
            str(run),
            "data.dataset=manifest",
            f"data.manifest={train}",
            f"data.test_manifest={test}",
            "train.epochs=1",
            "eval.references=false",
            *SMALL,
        ],
    )
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unlabelled_excluded"] == {"train": 2, "test": 1}
    assert summary["linear_probe"]["100%"]["n_train"] == 46  # the 46 labelled training rows
    assert "accuracy" in summary["knn"]
    assert "unlabelled rows left out of the label-based evaluation: 2 of train, 1 of test" in out


def test_oracle_with_blank_labels_removes_exactly_the_known_same_label_pairs(capsys, tmp_path):
    """The oracle removes every same-label negative whose labels are known: precision and recall
    are 1 over the known pairs (on main a batch with a blank lost its labels: the oracle failed)."""
    train = _png_manifest(tmp_path / "data", "train", 32, blanks=(1, 2, 9))
    run = tmp_path / "run"
    argv = _train_manifest(run, train, "negatives.name=oracle", "train.epochs=1", max_steps=None)
    code, _, err = cli(capsys, argv)
    assert code == 0, err
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["negatives/precision"] == pytest.approx(1.0, abs=1e-12)
    assert record["negatives/recall"] == pytest.approx(1.0, abs=1e-12)


def test_detection_stats_count_only_pairs_with_known_labels():
    """Precision, recall and the true-FN fraction against a plain float64 loop over the pairs."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([0, 1, 0, -1, 1, -1])
    (batch,) = [simclr_pairs(z1, z2, torch.arange(6), labels)]
    keep = torch.rand(batch.neg_mask.shape, generator=torch.Generator().manual_seed(1)) > 0.4
    stats = DetectionStats()
    stats.update(batch, keep)
    got = stats.compute()

    al, cl = batch.anchor_labels.tolist(), batch.candidate_labels.tolist()
    neg = batch.neg_mask.tolist()
    prec, rec, fn, known_neg, removed, negatives = [], [], 0.0, 0.0, 0.0, 0.0
    for i in range(len(al)):
        hits = n_rem_known = n_same = 0.0
        for j in range(len(cl)):
            if not neg[i][j]:
                continue
            negatives += 1
            gone = not bool(keep[i, j])
            removed += gone
            if al[i] < 0 or cl[j] < 0:
                continue
            known_neg += 1
            same = al[i] == cl[j]
            n_same += same
            n_rem_known += gone
            hits += same and gone
        if n_rem_known:
            prec.append(hits / n_rem_known)
        if n_same:
            rec.append(hits / n_same)
        fn += n_same
    assert got["removed_fraction"] == pytest.approx(removed / negatives, abs=1e-12)
    assert got["precision"] == pytest.approx(sum(prec) / len(prec), abs=1e-12)
    assert got["recall"] == pytest.approx(sum(rec) / len(rec), abs=1e-12)
    assert got["true_fn_fraction"] == pytest.approx(fn / known_neg, abs=1e-12)


# ------------------------------------------------------------------ item 17: DICOM
@pytest.fixture
def dicom_manifest(tmp_path) -> Path:
    """16 8x8 12-bit DICOMs in two classes (one without a suffix), listed in a manifest."""
    root = tmp_path / "dcm"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        name = f"{i:03d}.dcm" if i != 7 else "007"  # MIMIC-style file without a suffix
        write_dicom(root / name, rng.integers(0, 4096, (8, 8)))
        rows.append({"path": name, "label": i % 2})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def _train_manifest(run: Path, manifest: Path, *extra: str, max_steps: int | None = 2) -> list[str]:
    """``debiascl train`` argv on a manifest, ``max_steps`` steps (None: the configured epochs)."""
    steps = [] if max_steps is None else [f"train.max_steps={max_steps}"]
    return train_argv(run, manifest, *steps, *extra)


def test_dicom_manifest_trains_from_the_cli(capsys, tmp_path, dicom_manifest):
    from debiascl.data.dicom import read_dicom
    from debiascl.data.manifest import ManifestDataset

    code, _, err = cli(capsys, _train_manifest(tmp_path / "run", dicom_manifest))
    assert code == 0, err
    assert ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name.endswith(
        "step00000002.pt"
    )
    ds = ManifestDataset(dicom_manifest, image_size=None)
    for row in (0, 7):  # with and without the .dcm suffix
        expected = np.rint(read_dicom(ds.paths[row]) * 255).astype(np.uint8)
        assert ds[row]["image"][0].numpy().tolist() == expected.tolist()


def test_dicom_image_folder_is_listed_and_read(tmp_path):
    from debiascl.data.image_folder import ImageFolderDataset

    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(3):
            write_dicom(tmp_path / "f" / c / f"{i}.dcm", np.full((4, 4), 100 * i + 1))
    ds = ImageFolderDataset(tmp_path / "f", image_size=4)
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds[0]["image"].shape == (1, 4, 4)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_missing_dicom_extra_names_the_extra(capsys, tmp_path, dicom_manifest, monkeypatch, policy):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if the extra were not installed
    argv = _train_manifest(tmp_path / "run", dicom_manifest, f"data.on_bad_image={policy}")
    code, _, err = cli(capsys, argv)
    assert code == 2
    one_line_error(err, "pip install 'debiascl[dicom]'", ".dcm")


def test_every_image_skipped_says_so(capsys, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(16):
        (root / f"{i}.png").write_bytes(b"not an image")
    pd.DataFrame(
        {"path": [f"{i}.png" for i in range(16)], "label": [i % 2 for i in range(16)]}
    ).to_csv(root / "train.csv", index=False)
    argv = _train_manifest(tmp_path / "run", root / "train.csv", "data.on_bad_image=skip")
    code, _, err = cli(capsys, argv)
    assert code == 2
    one_line_error(err, "all 16 training images were unreadable and skipped")


def test_mimic_dicom_manifest_from_the_medical_loader_trains(capsys, tmp_path):
    """load_mimic_cxr(suffix=".dcm") -> write_manifest -> `debiascl train` reads the DICOMs."""
    from debiascl.data.medical import load_mimic_cxr, write_manifest

    n = 16
    subjects = [10000000 + i for i in range(n)]
    studies = [50000000 + i for i in range(n)]
    meta = pd.DataFrame(
        {
            "dicom_id": [f"d{i}" for i in range(n)],
            "subject_id": subjects,
            "study_id": studies,
            "ViewPosition": ["PA"] * n,
        }
    )
    labels = pd.DataFrame(
        {"subject_id": subjects, "study_id": studies, "Edema": [float(i % 2) for i in range(n)]}
    )
    patients = pd.DataFrame({"subject_id": subjects, "gender": ["F", "M"] * (n // 2)})
    manifest = load_mimic_cxr(meta, labels, patients, suffix=".dcm")
    root = tmp_path / "mimic"
    rng = np.random.default_rng(0)
    for rel in manifest["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_dicom(root / rel, rng.integers(0, 4096, (8, 8)))
    path = write_manifest(manifest, root / "train.csv")
    argv = _train_manifest(tmp_path / "run", path, "data.label_column=Edema")
    code, _, err = cli(capsys, argv)
    assert code == 0, err
    assert ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_missing_dicom_extra_in_a_loader_worker_is_one_line(
    capsys, tmp_path, dicom_manifest, monkeypatch
):
    """Raised in a DataLoader worker process, the error still reaches the user as one line."""
    monkeypatch.setitem(sys.modules, "pydicom", None)  # inherited by the forked worker
    argv = _train_manifest(tmp_path / "run", dicom_manifest, "data.num_workers=1")
    code, _, err = cli(capsys, argv)
    assert code == 2
    one_line_error(err, "pip install 'debiascl[dicom]'")
