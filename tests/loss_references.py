"""Plain float64 loop references of the InfoNCE losses, shared by the loss tests."""

from __future__ import annotations

import math

import torch


def unit64(z: torch.Tensor) -> torch.Tensor:
    """Rows of ``z`` in float64 scaled to unit norm (a zero row stays zero)."""
    z = z.double()
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float, keep=None) -> float:
    """Loop over the 2B anchors: -log(e^{pos/t} / (e^{pos/t} + sum_neg e^{s/t})), the negatives
    limited to ``keep[i, j]`` when a (2B, 2B) keep-mask is given."""
    z = unit64(torch.cat([z1, z2]))
    n, b = z.shape[0], z.shape[0] // 2
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        logits = [
            float(z[i] @ z[j]) / t
            for j in range(n)
            if j != i and (j == p or keep is None or keep[i, j])
        ]
        total += -float(z[i] @ z[p]) / t + math.log(sum(math.exp(v) for v in logits))
    return total / n


def reference_clip(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """Symmetric CLIP loss: the mean over both directions of -log softmax of the matched pair."""
    img, txt = unit64(img), unit64(txt)
    b = img.shape[0]
    total = 0.0
    for a, c in ((img, txt), (txt, img)):
        for i in range(b):
            logits = [scale * float(a[i] @ c[j]) for j in range(b)]
            total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    return total / (2 * b)
