"""Gradient caching gives the full-batch gradients and table updates (float64, tiny model)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from debiascl.errors import ConfigError
from debiascl.negatives.fnc import FNCDetector
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.oracle import OracleDetector
from debiascl.negatives.single import SingleThresholdDetector
from debiascl.objectives import ContrastiveObjective, InfoNCELoss, StepContext
from debiascl.objectives.debiased_loss import DebiasedLoss
from debiascl.objectives.grad_cache import cached_backward
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss

N, B, MICRO = 40, 12, 5  # micro-batches of 5, 5, 2


def _loss(name: str, mode: str) -> nn.Module:
    return {
        "infonce": lambda: InfoNCELoss(),
        "sogclr": lambda: GlobalContrastiveLoss(N, mode=mode, gamma=0.8),
        "dcl": lambda: DebiasedLoss(eta=0.1),
        "hcl": lambda: DebiasedLoss(eta=0.1, beta=1.0),
    }[name]()


def _detector(name: str, mode: str) -> nn.Module | None:
    return {
        "none": lambda: None,
        "glofnd": lambda: GloFNDDetector(N, alpha=0.2, mode=mode, init="batch_quantile", lr=0.2),
        "fnc": lambda: FNCDetector(alpha=0.2),
        "single": lambda: SingleThresholdDetector(alpha=0.2, mode=mode, lr=0.2),
        "oracle": lambda: OracleDetector(),
    }[name]()


def _encoders(dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 8))

    return mlp().double(), mlp().double()


def _tables(obj: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in obj.state_dict().items() if k.endswith("data")}


@pytest.mark.parametrize("mode", ["image_image", "image_text"])
@pytest.mark.parametrize("detector", ["none", "glofnd", "fnc", "single", "oracle"])
@pytest.mark.parametrize("loss", ["infonce", "sogclr", "dcl", "hcl"])
def test_cached_gradients_equal_full_batch(loss: str, detector: str, mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    objective = ContrastiveObjective(mode, _loss(loss, mode), _detector(detector, mode), N)
    enc_a, enc_b = _encoders()
    if mode == "image_image":
        enc_b = enc_a
    c_obj, c_a = copy.deepcopy(objective), copy.deepcopy(enc_a)
    c_b = c_a if mode == "image_image" else copy.deepcopy(enc_b)
    full_params = list({id(p): p for m in (enc_a, enc_b) for p in m.parameters()}.values())
    cached_params = list({id(p): p for m in (c_a, c_b) for p in m.parameters()}.values())
    labels = torch.randint(0, 3, (B,), generator=g)
    for step in range(3):  # later steps read the tables the earlier ones wrote
        xa = torch.randn(B, 6, generator=g, dtype=torch.float64)
        xb = xa + 0.1 * torch.randn(B, 6, generator=g, dtype=torch.float64)
        ids = torch.randperm(N, generator=g)[:B]
        ctx = StepContext(step=step)
        for p in full_params + cached_params:
            p.grad = None
        full = objective(enc_a(xa), enc_b(xb), ids, labels, logit_scale=4.0, ctx=ctx)
        full.loss.backward()
        out = cached_backward(c_obj, c_a, c_b, xa, xb, ids, MICRO, labels, logit_scale=4.0, ctx=ctx)
        # micro-batch matmuls round differently from the full batch's: equal up to float64 rounding
        torch.testing.assert_close(out.loss, full.loss.detach(), rtol=1e-12, atol=0)
        for p_full, p_cached in zip(full_params, cached_params, strict=True):
            torch.testing.assert_close(p_cached.grad, p_full.grad, rtol=1e-10, atol=1e-13)
        full_tables, cached_tables = _tables(objective), _tables(c_obj)
        assert full_tables.keys() == cached_tables.keys()
        for key, value in full_tables.items():
            # updated once per global batch (visit counts equal), same values (float32 tables)
            torch.testing.assert_close(cached_tables[key], value, rtol=1e-6, atol=1e-7)


def test_dropout_is_replayed_in_the_second_pass() -> None:
    """With dropout, the cached gradient is that of the same micro-batch forwards."""
    enc, _ = _encoders(dropout=0.5)
    obj = ContrastiveObjective("image_image", InfoNCELoss(), None, N)
    x = torch.randn(B, 6, dtype=torch.float64)
    x2 = x + 0.1
    ids = torch.arange(B)
    torch.manual_seed(11)
    cached_backward(obj, enc, enc, x, x2, ids, MICRO, logit_scale=4.0)
    got = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    torch.manual_seed(11)  # the same random stream, micro-batch by micro-batch, with a graph
    a, b = [], []
    for s in range(0, B, MICRO):
        a.append(enc(x[s : s + MICRO]))
        b.append(enc(x2[s : s + MICRO]))
    obj(torch.cat(a), torch.cat(b), ids, logit_scale=4.0).loss.backward()
    for p, want in zip(enc.parameters(), got, strict=True):
        torch.testing.assert_close(want, p.grad, rtol=1e-10, atol=1e-13)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        cached_backward(obj, enc, enc, x, x2, ids, 0)
