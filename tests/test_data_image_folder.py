"""root/<class>/<image> folders: labels from folder names, stable ids from sorted paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from debiascl.compose import build_data
from debiascl.config.schema import DataConfig
from debiascl.data.image_folder import ImageFolderDataset
from debiascl.errors import DataError


def _write(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # Written in a scrambled order; ids must follow the sorted relative paths.
    _write(tmp_path / "train" / "sneaker" / "z.png", 30)
    _write(tmp_path / "train" / "ankle_boot" / "b.png", 20)
    _write(tmp_path / "train" / "sneaker" / "a.png", 40)
    _write(tmp_path / "train" / "ankle_boot" / "a.png", 10)
    _write(tmp_path / "train" / "ankle_boot" / "deep" / "c.png", 50)
    (tmp_path / "train" / "sneaker" / "notes.txt").write_text("not an image")
    _write(tmp_path / "test" / "sneaker" / "q.png", 60)
    return tmp_path


def test_labels_and_stable_ids(folder: Path) -> None:
    ds = ImageFolderDataset(folder / "train", image_size=None)
    assert ds.class_names == ["ankle_boot", "sneaker"]
    rel = [Path(p).relative_to(folder / "train").as_posix() for p in ds.paths]
    assert rel == ["ankle_boot/a.png", "ankle_boot/b.png", "ankle_boot/deep/c.png",
                   "sneaker/a.png", "sneaker/z.png"]  # fmt: skip
    assert [int(ds[i]["image"][0, 0, 0]) for i in range(len(ds))] == [10, 20, 50, 40, 30]
    assert [ds[i]["label"] for i in range(len(ds))] == [0, 0, 0, 1, 1]
    assert [ds[i]["index"] for i in range(len(ds))] == [0, 1, 2, 3, 4]
    again = ImageFolderDataset(folder / "train", image_size=None)
    assert list(again.paths) == list(ds.paths)


def test_test_folder_uses_training_classes(folder: Path) -> None:
    test = ImageFolderDataset(folder / "test", class_names=["ankle_boot", "sneaker"])
    assert test.labels.tolist() == [1]
    _write(folder / "test" / "bag" / "x.png", 1)
    with pytest.raises(DataError, match="bag"):
        ImageFolderDataset(folder / "test", class_names=["ankle_boot", "sneaker"])


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty")


def test_build_data_image_folder_with_captions(folder: Path) -> None:
    cfg = DataConfig(dataset="image_folder", root=str(folder), mode="image_text", image_size=8)
    bundle = build_data(cfg, seed=0)
    assert len(bundle.train) == 5 and len(bundle.test) == 1
    assert bundle.train[0]["image"].shape == (1, 8, 8)
    assert "ankle boot" in bundle.info.texts[0] and "sneaker" in bundle.test.texts[0]
