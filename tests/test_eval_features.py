"""Feature extraction: ordering, optional fields, no-grad, progress bar only on a terminal."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from debiascl.errors import DataError
from debiascl.eval import extract_features
from debiascl.eval.features import FeatureSet


class TinySet(Dataset):
    def __init__(self, n=23, attrs_as_dict=False):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
        self.labels = torch.arange(n) % 3
        self.sex = torch.arange(n) % 2
        self.attrs_as_dict = attrs_as_dict

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        attrs = {"sex": self.sex[i], "age": i * 2} if self.attrs_as_dict else self.sex[i]
        return {
            "index": 100 + i,
            "image": self.images[i],
            "label": self.labels[i],
            "text": f"caption {i}",
            "attrs": attrs,
        }


torch.manual_seed(0)
PROJ = torch.nn.Linear(16, 5)


def encode(batch):
    assert not torch.is_grad_enabled(), "extraction must run without autograd"
    return PROJ(batch["image"].float().flatten(1) / 255)


def test_collects_rows_in_loader_order():
    ds = TinySet()
    fs = extract_features(encode, DataLoader(ds, batch_size=5), progress=False)
    assert isinstance(fs, FeatureSet) and len(fs) == 23
    with torch.no_grad():
        expected = PROJ(ds.images.float().flatten(1) / 255)
    torch.testing.assert_close(fs.features, expected)
    assert fs.features.dtype == torch.float32 and not fs.features.requires_grad
    assert fs.ids.tolist() == list(range(100, 123))
    assert fs.labels.dtype == torch.int64 and fs.labels.tolist() == ds.labels.tolist()
    assert fs.texts == [f"caption {i}" for i in range(23)]
    assert torch.equal(fs.attrs, ds.sex)


def test_dict_attrs_and_missing_optional_fields():
    fs = extract_features(encode, DataLoader(TinySet(attrs_as_dict=True), batch_size=4))
    assert set(fs.attrs) == {"sex", "age"}
    assert fs.attrs["age"].tolist() == [2 * i for i in range(23)]

    batches = [{"index": torch.arange(3), "image": torch.zeros(3, 1, 4, 4)}]
    fs = extract_features(encode, batches)
    assert fs.labels is None and fs.texts is None and fs.attrs is None


def test_half_precision_output_is_stored_as_float32():
    batches = [{"index": torch.arange(2), "image": torch.zeros(2, 1, 4, 4)}]
    fs = extract_features(lambda b: torch.ones(2, 3, dtype=torch.bfloat16), batches)
    assert fs.features.dtype == torch.float32


def test_unique_by_id_drops_sampler_padding():
    fs = FeatureSet(
        features=torch.arange(10.0).reshape(5, 2),
        labels=torch.tensor([0, 1, 2, 0, 1]),
        ids=torch.tensor([4, 2, 7, 4, 2]),
        texts=list("abcde"),
        attrs={"sex": torch.tensor([1, 0, 1, 1, 0])},
    )
    u = fs.unique_by_id()
    assert u.ids.tolist() == [2, 4, 7]
    assert u.features[:, 0].tolist() == [2.0, 0.0, 4.0]
    assert u.texts == ["b", "a", "c"]
    assert u.attrs["sex"].tolist() == [0, 1, 1]


def test_bad_batches_raise():
    with pytest.raises(DataError, match="index"):
        extract_features(encode, [{"image": torch.zeros(2, 1, 4, 4)}])
    with pytest.raises(DataError, match="encode must return"):
        extract_features(lambda b: torch.zeros(3, 2), [{"index": torch.arange(2)}])
    with pytest.raises(DataError, match="no batches"):
        extract_features(encode, [])
    mixed = [
        {"index": torch.arange(2), "image": torch.zeros(2, 1, 4, 4), "label": torch.zeros(2)},
        {"index": torch.arange(2), "image": torch.zeros(2, 1, 4, 4)},
    ]
    with pytest.raises(DataError, match="same optional entries"):
        extract_features(encode, mixed)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_hidden_when_stderr_is_not_a_terminal(monkeypatch):
    loader = DataLoader(TinySet(), batch_size=5)
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    extract_features(encode, loader, desc="probe-features")
    assert captured.getvalue() == ""

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    extract_features(encode, loader, desc="probe-features")
    text = terminal.getvalue()
    assert "probe-features" in text and "img/s" in text

    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    extract_features(encode, loader, progress=False)
    assert quiet.getvalue() == ""
