"""Section 5: data pipeline throughput and whether training is input-bound.

* Augmentation: debiascl's batched ``TwoViewAugment`` (one kornia call per batch) vs the same
  random ops applied image by image (what per-sample torchvision-style transforms in the loader
  workers do), in images per CPU second.
* Input-bound: a loader over PNG-encoded 28x28 images (decoded in ``__getitem__``, as from disk)
  with 0 / 1 / 2 workers, feeding the small-CNN SogCLR step; wall time of the loop divided by the
  wall time of the same steps on an already loaded batch. About 1.0 means the input pipeline keeps
  up; above 1 means training waits for data.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import interleaved, table
from benchmarks.glofnd_overhead import build_encoder
from debiascl.data.augment import TwoViewAugment
from debiascl.objectives import ContrastiveObjective
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss


class PngImages(Dataset):
    """``n`` random 28x28 grey images stored as PNG bytes, decoded on access."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, "PNG")
            self.blobs.append(buf.getvalue())

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = np.asarray(Image.open(io.BytesIO(self.blobs[i])), dtype=np.uint8)
        return {"index": i, "image": torch.from_numpy(img.copy())[None]}


def augmentation_rate(batch: int = 256, rounds: int = 10) -> tuple[str, dict]:
    aug = TwoViewAugment(28, 1)
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)

    def per_sample() -> None:
        for i in range(batch):
            aug(images[i : i + 1])

    med = interleaved({"batched": lambda: aug(images), "per sample": per_sample}, rounds, 1)
    rows = [[k, batch / v] for k, v in med.items()]
    speedup = med["per sample"] / med["batched"]
    text = table(["two-view augmentation (28x28)", "images / CPU s"], rows)
    text += f"\n\nBatched / per-sample speed-up: {speedup:.1f}x"
    return text, {"augmentation speed-up": speedup}


def input_bound(batch: int = 256, steps: int = 8, workers: tuple[int, ...] = (0, 1, 2)) -> tuple:
    torch.manual_seed(0)
    data = PngImages(batch * steps)
    encoder = build_encoder()
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    aug = TwoViewAugment(28, 1)
    objective = ContrastiveObjective(
        "image_image", GlobalContrastiveLoss(len(data)), num_samples=len(data)
    )

    def train(item: dict[str, Any]) -> None:
        v1, v2 = aug(item["image"])
        out = objective(encoder(v1), encoder(v2), item["index"], logit_scale=5.0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    loaded = next(iter(DataLoader(data, batch_size=batch)))
    start = time.perf_counter()
    for _ in range(steps):
        train(loaded)
    step_only = time.perf_counter() - start
    rows, results = [], {}
    for w in workers:
        loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=w, drop_last=True)
        start = time.perf_counter()
        n = sum(1 for _ in loader)
        load_only = time.perf_counter() - start
        start = time.perf_counter()
        for item in loader:
            train(item)
        loop = time.perf_counter() - start
        rows.append([w, n * batch / load_only, loop / step_only])
        results[f"input-bound ratio, {w} workers"] = loop / step_only
    text = table(["loader workers", "loader alone, images / s", "loop / compute-only"], rows)
    text += f"\n\nCompute only (batch already loaded): {steps * batch / step_only:.0f} images / s"
    return text, results
