"""Foundation distributed correctness: DDP + gathered candidates give the global-batch gradient.

Two real gloo processes each encode half of a global batch with a tiny linear encoder wrapped in
DDP; the objective's value and the parameter gradients must equal a single process's on the whole
batch. Also: single-process NT-Xent equals lightly's ``NTXentLoss`` (an independent library).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from debiascl.objectives import ContrastiveObjective, InfoNCELoss, StepContext
from distributed_helpers import run_distributed

GLOBAL_B, DIM_IN, DIM_OUT = 8, 6, 4


class Towers(nn.Module):
    """One image tower for both views (image_image) or image + text towers (image_text)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.image = nn.Linear(DIM_IN, DIM_OUT)
        self.text = nn.Linear(DIM_IN, DIM_OUT) if mode == "image_text" else self.image

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(x), self.text(y)


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(GLOBAL_B, DIM_IN, generator=g)
    y = torch.randn(GLOBAL_B, DIM_IN, generator=g)
    ids = torch.randperm(50, generator=g)[:GLOBAL_B]
    return x, y, ids


def _step(model: nn.Module, mode: str, x, y, ids) -> dict:
    objective = ContrastiveObjective(mode, InfoNCELoss(), num_samples=50)
    a, b = model(x, y)
    a.retain_grad()
    out = objective(a, b, ids, logit_scale=3.0, ctx=StepContext())
    out.loss.backward()
    params = model.module if isinstance(model, DistributedDataParallel) else model
    return {
        "value": out.value.detach().clone(),
        "grads": {k: p.grad.detach().clone() for k, p in params.named_parameters()},
        "emb_grad": a.grad.detach().clone(),
    }


def _worker(rank: int, world_size: int) -> dict:
    x, y, ids = _data()
    b = GLOBAL_B // world_size
    local = slice(rank * b, (rank + 1) * b)
    out = {}
    for mode in ("image_image", "image_text"):
        torch.manual_seed(0)
        model = DistributedDataParallel(Towers(mode))
        out[mode] = _step(model, mode, x[local], y[local], ids[local])
    return out


def _single(mode: str) -> dict:
    torch.manual_seed(0)
    x, y, ids = _data()
    return _step(Towers(mode), mode, x, y, ids)


@pytest.mark.distributed
def test_ddp_objective_matches_single_process(tmp_path):
    world = 2
    results = run_distributed(_worker, world_size=world, tmp_path=tmp_path)
    b = GLOBAL_B // world
    for mode in ("image_image", "image_text"):
        ref = _single(mode)
        for rank, res in enumerate(results):
            got = res[mode]
            torch.testing.assert_close(got["value"], ref["value"], rtol=1e-6, atol=1e-6)
            assert set(got["grads"]) == set(ref["grads"])
            for name, grad in ref["grads"].items():
                torch.testing.assert_close(got["grads"][name], grad, rtol=1e-5, atol=1e-6)
            # Local embeddings receive world x the gradient of the global mean (DDP then
            # averages the parameter gradients over ranks): see objectives/objective.py.
            local_ref = ref["emb_grad"][rank * b : (rank + 1) * b]
            torch.testing.assert_close(got["emb_grad"], world * local_ref, rtol=1e-5, atol=1e-7)


def test_nt_xent_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    torch.manual_seed(1)
    z0 = torch.randn(16, 8, dtype=torch.float32, requires_grad=True)
    z1 = torch.randn(16, 8, dtype=torch.float32, requires_grad=True)
    temperature = 0.3
    ref = lightly_loss.NTXentLoss(temperature=temperature)(z0, z1)
    (g0_ref, g1_ref) = torch.autograd.grad(ref, (z0, z1))
    objective = ContrastiveObjective("image_image", InfoNCELoss())
    out = objective(z0, z1, torch.arange(16), logit_scale=1.0 / temperature)
    g0, g1 = torch.autograd.grad(out.loss, (z0, z1))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g0, g0_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g1, g1_ref, rtol=1e-4, atol=1e-6)
