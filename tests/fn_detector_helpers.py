"""Shared inputs of the text / stable / eta detector tests (float64 references, gloo runs)."""

from __future__ import annotations

import torch

from debiascl.negatives.stable import EtaGloFNDDetector, StableGloFNDDetector
from debiascl.negatives.text_sim import TextSimilarityDetector
from debiascl.objectives import ContrastiveObjective, InfoNCELoss

N, DIM, TEXT_DIM = 24, 6, 5
DETECTORS = ("text_fixed", "text_glofnd", "stable_glofnd", "eta_glofnd")


def text_table(seed: int = 3) -> torch.Tensor:
    """(N, TEXT_DIM) embeddings with groups of identical texts (ids i and i + 12 share one)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N // 2, TEXT_DIM, generator=g, dtype=torch.float64)
    return torch.cat([base, base]) + 0.0


def eta_table() -> torch.Tensor:
    return torch.linspace(0.05, 0.6, N, dtype=torch.float64)


def make_detector(kind: str, mode: str, **kw) -> torch.nn.Module:
    common = dict(mode=mode, init="batch_quantile", lr=0.1, **kw)
    if kind == "text_fixed":
        return TextSimilarityDetector(N, text_table(), text_rule="fixed", text_threshold=0.9)
    if kind == "text_glofnd":
        return TextSimilarityDetector(N, text_table(), text_rule="glofnd", alpha=0.25, **common)
    if kind == "stable_glofnd":
        return StableGloFNDDetector(N, alpha=0.25, **common)
    return EtaGloFNDDetector(N, eta_table(), alpha_scale=0.5, alpha_min=0.05, **common)


def make_objective(kind: str, mode: str, **kw) -> ContrastiveObjective:
    return ContrastiveObjective(mode, InfoNCELoss(), make_detector(kind, mode, **kw), N)


def batches(steps: int, global_b: int, seed: int = 7):
    """(a, b, a_ref, b_ref, ids) per step: views/image-text pairs and their stable embeddings."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(DIM, DIM, generator=g)
    for _ in range(steps):
        ids = torch.randperm(N, generator=g)[:global_b]
        base = torch.randn(global_b, DIM, generator=g)
        a = base + 0.5 * torch.randn(global_b, DIM, generator=g)
        b = base + 0.5 * torch.randn(global_b, DIM, generator=g)
        yield a, b, base @ mix, (base + 0.1 * a) @ mix, ids
