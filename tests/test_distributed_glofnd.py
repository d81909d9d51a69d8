"""GloFND and SogCLR tables under real multi-process training (gloo, 2 and 3 processes).

After several steps over the same global batches, every rank must hold identical per-sample
tables (u, lambda, Adam moments, visit counts) equal to a single process's, and the same loss.
Ids repeat across steps, so the moving averages and per-sample Adam states are exercised.
"""

from __future__ import annotations

import pytest
import torch

from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.negatives.single import SingleThresholdDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from distributed_helpers import run_distributed

N, GLOBAL_B, DIM, STEPS = 30, 12, 5, 6
SETUPS = ("image_image/glofnd", "image_text/glofnd", "image_image/single")


def _objective(setup: str) -> ContrastiveObjective:
    mode, detector = setup.split("/")
    if detector == "glofnd":
        det = GloFNDDetector(
            N,
            alpha=0.2,
            mode=mode,
            lr=0.1,
            init="batch_quantile" if mode == "image_text" else "one",
        )
    else:
        det = SingleThresholdDetector(alpha=0.2, mode=mode, lr=0.1)
    loss = GlobalContrastiveLoss(N, mode=mode, gamma=0.8, gamma_schedule="cosine", gamma_min=0.3)
    return ContrastiveObjective(mode, loss, det, num_samples=N)


def _batches(setup: str):
    g = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        ids = torch.randperm(N, generator=g)[:GLOBAL_B]
        base = torch.randn(GLOBAL_B, DIM, generator=g)
        a = base + 0.5 * torch.randn(GLOBAL_B, DIM, generator=g)
        b = base + 0.5 * torch.randn(GLOBAL_B, DIM, generator=g)
        yield a, b, ids


def _run(setup: str, rank: int, world: int) -> dict:
    objective = _objective(setup)
    b = GLOBAL_B // world
    local = slice(rank * b, (rank + 1) * b)
    values = []
    for step, (a, bb, ids) in enumerate(_batches(setup)):
        ctx = StepContext(epoch=step, step=step, progress=step / STEPS)
        out = objective(a[local], bb[local], ids[local], logit_scale=5.0, ctx=ctx)
        values.append(out.value)
    state = {k: v.clone() for k, v in objective.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"state": state, "values": values}


def _worker(rank: int, world: int) -> dict:
    return {setup: _run(setup, rank, world) for setup in SETUPS}


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_tables_identical_on_every_rank_and_equal_single_process(world, tmp_path):
    results = run_distributed(_worker, world_size=world, tmp_path=tmp_path)
    for setup in SETUPS:
        ref = _run(setup, rank=0, world=1)
        tensors = {k: v for k, v in ref["state"].items() if isinstance(v, torch.Tensor)}
        assert any(k.endswith("data") for k in tensors), "no tables in the state"
        for rank in range(world):
            got = results[rank][setup]
            for key, want in tensors.items():
                # identical across ranks: bit for bit
                assert torch.equal(got["state"][key], results[0][setup]["state"][key]), key
                # equal to one process on the same global batches (matmul blocking may differ)
                torch.testing.assert_close(got["state"][key], want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                torch.stack(got["values"]), torch.stack(ref["values"]), rtol=1e-5, atol=1e-6
            )
        # The tables really moved: visited ids have visit counts and non-default values.
        for key, table in tensors.items():
            if key.endswith("data") and table.shape[0] == N:
                assert (table[:, -1] > 1).any(), f"{setup}: no id was revisited in {key}"
