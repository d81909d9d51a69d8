"""Manifest datasets (CSV/Parquet) on generated fixtures: 8/16-bit PNG, JPG, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from debiascl.compose import build_data
from debiascl.config.schema import DataConfig
from debiascl.data.build import make_loader
from debiascl.data.images import collate_skip_none, read_image
from debiascl.data.manifest import ManifestDataset
from debiascl.errors import DataError

GRAD8 = (np.arange(8 * 8).reshape(8, 8) * 4).astype(np.uint8)  # 0..252
GRAD16 = np.array([[0, 65535], [257 * 100, 257 * 37]], dtype=np.uint16)  # -> 0, 255, 100, 37


@pytest.fixture
def fixture_dir(tmp_path: Path) -> Path:
    """tmp/data/{imgs/*.png|jpg, train.csv, train.parquet, test.csv}."""
    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    Image.fromarray(GRAD8).save(root / "imgs" / "a8.png")
    img16 = Image.fromarray(GRAD16)
    assert img16.mode == "I;16"
    img16.save(root / "imgs" / "b16.png")
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    Image.fromarray(rgb).save(root / "imgs" / "c.jpg", quality=95)
    Image.fromarray(GRAD8[::-1].copy()).save(root / "imgs" / "d.png")
    train = pd.DataFrame(
        {
            "path": ["imgs/a8.png", "imgs/b16.png", "imgs/c.jpg", str(root / "imgs" / "d.png")],
            "report": ["normal", "effusion left", "normal", "edema"],
            "finding": ["normal", "effusion", "normal", "edema"],
            "sex": ["F", "M", None, "M"],
            "site": [2, 0, 1, None],
            "sid": [3, 0, 2, 1],
        }
    )
    train.to_csv(root / "train.csv", index=False)
    train.to_parquet(root / "train.parquet", index=False)
    test = pd.DataFrame(
        {
            "path": ["imgs/a8.png", "imgs/d.png"],
            "report": ["x", "y"],
            "finding": ["edema", "normal"],
            "sex": ["M", "F"],
            "site": [0, 1],
        }
    )
    test.to_csv(root / "test.csv", index=False)
    return root


def _expected_16() -> np.ndarray:
    return np.rint(GRAD16.astype(np.float64) / 65535 * 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["train.csv", "train.parquet"])
def test_manifest_reads_png8_png16_jpg(fixture_dir: Path, name: str, monkeypatch) -> None:
    monkeypatch.chdir(fixture_dir.parent)  # relative paths must not depend on the cwd
    ds = ManifestDataset(
        fixture_dir / name,
        text_column="report",
        label_column="finding",
        attribute_columns=["sex", "site"],
        channels=1,
        image_size=None,
    )
    assert len(ds) == 4
    a = ds[0]
    assert set(a) == {"index", "image", "label", "text", "attrs"}
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (1, 8, 8)
    assert np.array_equal(a["image"][0].numpy(), GRAD8)
    b = ds[1]
    assert b["image"].shape == (1, 2, 2)
    assert b["image"][0].tolist() == _expected_16().tolist() == [[0, 255], [100, 37]]
    c = ds[2]["image"].float()
    luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    assert torch.all((c - luma).abs() <= 3)  # JPEG is lossy
    assert np.array_equal(ds[3]["image"][0].numpy(), GRAD8[::-1])  # absolute path
    # Vocabularies: sorted string values; integer columns keep their values; blanks are -1.
    assert ds.class_names == ["edema", "effusion", "normal"]
    assert ds.labels.tolist() == [2, 1, 2, 0]
    assert ds.attr_names == ["sex", "site"]
    assert ds.attr_vocab == {"sex": {"F": 0, "M": 1}}
    assert ds.attrs.tolist() == [[0, 2], [1, 0], [-1, 1], [1, -1]]
    assert ds.texts == ["normal", "effusion left", "normal", "edema"]
    assert ds.ids.tolist() == [0, 1, 2, 3]


def test_manifest_rgb_resize_and_id_column(fixture_dir: Path) -> None:
    ds = ManifestDataset(fixture_dir / "train.csv", channels=3, image_size=4, id_column="sid")
    assert ds.ids.tolist() == [3, 0, 2, 1]
    assert ds[0]["index"] == 3
    img = ds[2]["image"]
    assert img.shape == (3, 4, 4)
    for ch, value in enumerate((200, 100, 50)):
        assert torch.all((img[ch].float() - value).abs() <= 4)
    grey = ds[0]["image"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # L -> RGB repeats
    # Reference resize: Pillow bilinear on the same 8-bit image.
    ref = np.asarray(Image.fromarray(GRAD8).resize((4, 4), Image.Resampling.BILINEAR))
    assert np.array_equal(grey[0].numpy(), ref)


def test_parquet_and_csv_agree(fixture_dir: Path) -> None:
    kwargs = {"text_column": "report", "label_column": "finding", "attribute_columns": ["sex"]}
    a = ManifestDataset(fixture_dir / "train.csv", image_size=8, **kwargs)
    b = ManifestDataset(fixture_dir / "train.parquet", image_size=8, **kwargs)
    for i in range(4):
        x, y = a[i], b[i]
        assert x["index"] == y["index"] and x["label"] == y["label"] and x["text"] == y["text"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["attrs"], y["attrs"])


def test_missing_columns_error_names_missing_and_available(fixture_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        ManifestDataset(
            fixture_dir / "train.csv", text_column="caption", attribute_columns=["race", "sex"]
        )
    msg = str(err.value)
    assert "'caption'" in msg and "'race'" in msg
    assert "available columns" in msg and "'report'" in msg and "'path'" in msg
    assert "'sex'" not in msg.split("available")[0]  # present columns are not called missing


def test_test_manifest_uses_training_vocabulary(fixture_dir: Path) -> None:
    train = ManifestDataset(
        fixture_dir / "train.csv", label_column="finding", attribute_columns=["sex", "site"]
    )
    test = ManifestDataset(
        fixture_dir / "test.csv",
        label_column="finding",
        attribute_columns=["sex", "site"],
        attr_vocab=train.attr_vocab,
        label_vocab=train.label_vocab,
    )
    assert test.labels.tolist() == [0, 2]  # edema, normal in the training vocabulary
    assert test.attrs.tolist() == [[1, 0], [0, 1]]
    # A value the training data never showed.
    with pytest.raises(DataError, match=r"\['X'\].*known: F, M"):
        pd.DataFrame({"path": ["imgs/a8.png"], "sex": ["X"]}).to_csv(
            fixture_dir / "bad.csv", index=False
        )
        ManifestDataset(
            fixture_dir / "bad.csv", attribute_columns=["sex"], attr_vocab=train.attr_vocab
        )


def test_non_integer_attribute_error(fixture_dir: Path) -> None:
    pd.DataFrame({"path": ["imgs/a8.png", "imgs/d.png"], "age": [31.5, 40.0]}).to_csv(
        fixture_dir / "age.csv", index=False
    )
    with pytest.raises(DataError, match=r"'age'.*non-integer"):
        ManifestDataset(fixture_dir / "age.csv", attribute_columns=["age"])


def test_duplicate_ids_error(fixture_dir: Path) -> None:
    pd.DataFrame({"path": ["imgs/a8.png", "imgs/d.png"], "sid": [4, 4]}).to_csv(
        fixture_dir / "dup.csv", index=False
    )
    with pytest.raises(DataError, match="distinct"):
        ManifestDataset(fixture_dir / "dup.csv", id_column="sid")


@pytest.fixture
def bad_manifest(fixture_dir: Path) -> Path:
    (fixture_dir / "imgs" / "broken.png").write_bytes(b"this is not a png")
    rows = ["imgs/a8.png", "imgs/broken.png", "imgs/d.png", "imgs/missing.png", "imgs/b16.png"]
    pd.DataFrame({"path": rows}).to_csv(fixture_dir / "bad_images.csv", index=False)
    return fixture_dir / "bad_images.csv"


def test_unreadable_image_error_names_file(bad_manifest: Path) -> None:
    ds = ManifestDataset(bad_manifest, image_size=8)
    assert ds[0]["image"].shape == (1, 8, 8)
    with pytest.raises(DataError, match=r"broken\.png.*on_bad_image=skip"):
        ds[1]
    with pytest.raises(DataError, match=r"missing\.png"):
        ds[3]


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_skipped_and_counted(bad_manifest: Path, workers: int) -> None:
    ds = ManifestDataset(bad_manifest, image_size=8, on_bad_image="skip")
    loader = make_loader(ds, 5, train=False, seed=0, num_workers=workers)
    batches = list(loader)
    assert len(batches) == 1
    assert batches[0]["index"].tolist() == [0, 2, 4]
    assert batches[0]["image"].shape == (3, 1, 8, 8)
    assert ds.num_skipped == 2
    if workers == 0:
        assert sorted(Path(p).name for p in ds.bad_images.skipped_files) == [
            "broken.png",
            "missing.png",
        ]
    assert collate_skip_none([None, None]) is None


def test_reader_extension_point(tmp_path: Path) -> None:
    """A plugged-in reader (stand-in for DICOM) returning a 12-bit array."""
    raw = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)
    np.save(tmp_path / "scan.npy", raw)
    pd.DataFrame({"path": ["scan.npy"]}).to_csv(tmp_path / "m.csv", index=False)
    readers = {".npy": lambda p: np.load(p)}
    ds = ManifestDataset(tmp_path / "m.csv", image_size=None, readers=readers)
    expected = np.rint(raw / 65535 * 255).astype(np.uint8)
    assert ds[0]["image"][0].numpy().tolist() == expected.tolist()
    ds_mm = ManifestDataset(
        tmp_path / "m.csv", image_size=None, readers=readers, high_bit_scaling="minmax"
    )
    expected_mm = np.rint(raw / 4095 * 255).astype(np.uint8)
    assert ds_mm[0]["image"][0].numpy().tolist() == expected_mm.tolist()
    # Without the reader the .npy file is unreadable.
    with pytest.raises(DataError, match=r"scan\.npy"):
        ManifestDataset(tmp_path / "m.csv")[0]


def test_read_image_rgba_palette(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png", channels=3, image_size=None)
    assert out[:, 0, 0].tolist() == [0, 255, 0]


def test_build_data_manifest_image_text(fixture_dir: Path) -> None:
    cfg = DataConfig(
        dataset="manifest",
        mode="image_text",
        manifest=str(fixture_dir / "train.csv"),
        test_manifest=str(fixture_dir / "test.csv"),
        text_column="report",
        label_column="finding",
        attribute_columns=["sex"],
        image_size=8,
    )
    bundle = build_data(cfg, seed=0)
    assert bundle.info.texts == ["normal", "effusion left", "normal", "edema"]
    assert bundle.class_names == ["edema", "effusion", "normal"]
    assert bundle.attr_names == ["sex"] and bundle.attr_vocab == {"sex": {"F": 0, "M": 1}}
    assert bundle.test.labels.tolist() == [0, 2]
    batch = next(iter(make_loader(bundle.train, 2, train=True, seed=0)))
    assert set(batch) == {"index", "image", "label", "text", "attrs"}
    assert batch["image"].shape == (2, 1, 8, 8)
