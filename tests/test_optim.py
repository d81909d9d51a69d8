"""Optimisers and the warm-up + cosine schedule against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from debiascl.config import load_config
from debiascl.train.optim import build_optimizer, warmup_cosine


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_optimisers_build_and_exclude_norms_and_biases_from_decay(name: str) -> None:
    cfg = load_config(None, [f"optim.name={name}", "optim.weight_decay=0.1"]).optim
    opt = build_optimizer(_model(), cfg)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    loss = _model()(torch.randn(3, 4)).sum()
    loss.backward()
    opt.step()


def test_warmup_cosine_matches_closed_form() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    warmup, total, floor = 5, 25, 0.1
    sched = warmup_cosine(opt, warmup, total, floor)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for step, lr in enumerate(seen):
        if step < warmup:
            expected = 2.0 * (step + 1) / warmup
        else:
            progress = (step - warmup) / (total - warmup)
            expected = 2.0 * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lr == pytest.approx(expected)
    assert max(seen) == pytest.approx(2.0)
