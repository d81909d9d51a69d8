"""data.classes: class subsets of both splits, relabelled in the listed order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debiascl.compose import build_data
from debiascl.config import load_config
from debiascl.data.classes import select_classes
from debiascl.data.datasets import TensorImageDataset
from debiascl.errors import ConfigError

NAMES = ["t-shirt", "ankle boot", "bag", "coat"]


def _dataset() -> TensorImageDataset:
    labels = torch.tensor([0, 1, 2, 3, 2, 1, 0, 3, 2])
    images = torch.arange(9, dtype=torch.uint8).reshape(9, 1, 1, 1).expand(9, 1, 2, 2)
    texts = [f"text {i}" for i in range(9)]
    return TensorImageDataset(images.clone(), labels, texts=texts, class_names=NAMES)


def test_rows_labels_and_names_follow_the_listed_classes():
    out = select_classes(_dataset(), ["bag", "Ankle_Boot"], "train")
    # rows with labels 2 or 1, in their original order: 1, 2, 4, 5, 8
    assert out.texts == ["text 1", "text 2", "text 4", "text 5", "text 8"]
    assert out.labels.tolist() == [1, 0, 0, 1, 0]  # bag -> 0, ankle boot -> 1
    assert out.class_names == ["bag", "ankle boot"]
    assert out.ids.tolist() == list(range(5)) and out.num_samples == 5
    assert float(out[0]["image"].flatten()[0]) == 1.0  # the image of original row 1
    by_index = select_classes(_dataset(), [3, 0], "train")
    assert by_index.class_names == ["coat", "t-shirt"]
    assert np.array_equal(by_index.labels.numpy(), [1, 0, 1, 0])


def test_unknown_repeated_or_absent_classes_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown class 'sock'; choose from: t-shirt, ankle"):
        select_classes(_dataset(), ["bag", "sock"], "train")
    with pytest.raises(ConfigError, match="twice"):
        select_classes(_dataset(), ["bag", 2], "train")
    with pytest.raises(ConfigError, match="unknown class 7"):
        select_classes(_dataset(), [7], "test")
    small = _dataset().select([0, 1])
    with pytest.raises(ConfigError, match="test split has no sample of class 'coat'"):
        select_classes(small, ["t-shirt", "coat"], "test")


def test_config_applies_the_subset_to_both_splits_of_builtin_data():
    cfg = load_config("digits_clip", ["data.classes=[three, 5, one]"])
    bundle = build_data(cfg.data, cfg.seed)
    assert bundle.class_names == ["three", "five", "one"]
    for split in (bundle.train, bundle.test):
        assert split is not None
        assert sorted(set(split.labels.tolist())) == [0, 1, 2]
        assert split.class_names == ["three", "five", "one"]
    # image_text captions name only the kept classes, matching the relabelled labels
    for text, label in zip(bundle.train.texts[:20], bundle.train.labels[:20].tolist(), strict=True):
        assert ["three", "five", "one"][label] in text
    assert bundle.info.num_samples == len(bundle.train)
    with pytest.raises(ConfigError, match="unknown class 'eleven'"):
        build_data(load_config("digits_clip", ["data.classes=[eleven]"]).data, 0)


def test_manifest_label_column_subsets_both_manifests(tmp_path):
    from PIL import Image

    from debiascl.config.schema import DataConfig

    rows = []
    for i, label in enumerate(["cat", "dog", "bird", "dog", "cat", "bird"]):
        Image.new("L", (4, 4), color=i * 40).save(tmp_path / f"{i}.png")
        rows.append(f"{tmp_path / f'{i}.png'},{label} photo,{label}")
    (tmp_path / "train.csv").write_text("path,text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("path,text,label\n" + "\n".join(rows[:3]) + "\n")
    cfg = DataConfig(
        dataset="manifest",
        manifest=str(tmp_path / "train.csv"),
        test_manifest=str(tmp_path / "test.csv"),
        mode="image_text",
        image_size=8,
        classes=["bird", "dog"],
    )
    bundle = build_data(cfg, seed=0)
    assert bundle.class_names == ["bird", "dog"]
    assert bundle.train.texts == ["dog photo", "bird photo", "dog photo", "bird photo"]
    assert bundle.train.labels.tolist() == [1, 0, 1, 0]
    assert bundle.test.texts == ["dog photo", "bird photo"] and bundle.test.labels.tolist() == [
        1,
        0,
    ]
