"""Tiny webdataset shards of scikit-learn digits for the streaming-training tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from debiascl.data.builtin import load_digits_split
from debiascl.data.shards import main as shards_main

#: 96 samples in 4 shards of unequal sizes (batch 16: 6 full batches per epoch in one process)
SIZES = (30, 20, 26, 20)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_digit_shards(
    root: Path, sizes: tuple[int, ...] = SIZES, split: str = "train", index: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Write shards of digits (PNG, caption, class) and index them; returns the images
    (n, 1, 8, 8), labels and captions in id order (shard name order, then file order)."""
    root.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits_split(split)
    n = sum(sizes)
    rng = np.random.default_rng(1)
    rows = rng.permutation(len(labels))[:n]  # shuffled samples, as the usual tools write them
    captions = [f"a handwritten {int(labels[r])} number {i % 7}" for i, r in enumerate(rows)]
    k = 0
    for s, size in enumerate(sizes):
        with tarfile.open(root / f"{split}-{s:04d}.tar", "w") as tar:
            for _ in range(size):
                buf = io.BytesIO()
                Image.fromarray(images[rows[k], 0].numpy()).save(buf, format="PNG")
                key = f"{split}{s}_{k:05d}"
                _add(tar, f"{key}.png", buf.getvalue())
                _add(tar, f"{key}.txt", captions[k].encode())
                _add(tar, f"{key}.cls", str(int(labels[rows[k]])).encode())
                k += 1
    if index:
        shards_main(["index", str(root)])
    sel = torch.from_numpy(rows)
    return images[sel].clone(), labels[sel].clone(), captions
