"""``data.side_captions``: captions as side evidence in image-image training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from debiascl.cli import main
from debiascl.compose.data import build_data
from debiascl.config import load_config
from debiascl.errors import ConfigError

TWO_STEPS = ["--no-eval", "data.train_size=128", "train.batch_size=64", "train.epochs=1"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = sorted((run / "checkpoints").glob("*.pt"))[-1]
    return torch.load(ckpt, map_location="cpu", weights_only=False)["model"]


def test_side_captions_reach_the_training_split_only() -> None:
    cfg = load_config("digits_simclr", ["data.side_captions=true", "data.train_size=128"])
    data = build_data(cfg.data, cfg.seed)
    assert data.train.texts is not None and len(data.train.texts) == 128
    names = data.class_names
    # each caption names its sample's class (the template captions of image_text mode)
    for text, label in zip(data.train.texts, data.train.labels.tolist(), strict=True):
        assert names[label].replace("_", " ") in text
    assert data.test is None or data.test.texts is None
    plain = build_data(load_config("digits_simclr", ["data.train_size=128"]).data, cfg.seed)
    assert plain.train.texts is None


def test_text_sim_removes_same_caption_negatives_and_the_model_sees_images_only(
    tmp_path: Path,
) -> None:
    runs = {}
    for name, extra in {
        "plain": [],
        "captions": ["data.side_captions=true"],
        "text_sim": [
            "data.side_captions=true",
            "negatives.name=text_sim",
            "negatives.text_encoder=tfidf",
            "negatives.text_threshold=0.999",
        ],
    }.items():
        runs[name] = tmp_path / name
        args = ["train", "digits_simclr", "--run-dir", str(runs[name]), *TWO_STEPS, *extra]
        assert main(args) == 0
    # the captions change nothing the model sees: same weights as without them
    a, b = _weights(runs["plain"]), _weights(runs["captions"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    # identical captions (tf-idf cosine 1) are removed: all of them share the anchor's label
    record = json.loads((runs["text_sim"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["negatives/removed_fraction"] > 0
    assert record["negatives/precision"] == 1.0
    c = _weights(runs["text_sim"])
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_side_captions_in_image_text_mode_is_refused_in_one_line() -> None:
    cfg = load_config("digits_clip", ["data.side_captions=true"])
    with pytest.raises(ConfigError, match="side_captions is for image_image") as err:
        build_data(cfg.data, cfg.seed)
    assert "\n" not in str(err.value)
