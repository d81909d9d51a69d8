"""text_sim, stable_glofnd and eta_glofnd under 2 real gloo processes equal one process.

Each rank passes its half of the same global batches (and of the stable embeddings); the
detectors' tables must be identical on both ranks and equal to one process's, and each rank's
keep-masks must be its rows of the single-process masks.
"""

from __future__ import annotations

import pytest
import torch

from debiascl.negatives.context import StepContext
from distributed_helpers import run_distributed
from fn_detector_helpers import DETECTORS, batches, make_objective

GLOBAL_B, STEPS = 12, 4
SETUPS = [(k, m) for k in DETECTORS for m in ("image_image", "image_text")]


def _run(kind: str, mode: str, rank: int, world: int) -> dict:
    objective = make_objective(kind, mode)
    b = GLOBAL_B // world
    local = slice(rank * b, (rank + 1) * b)
    masks, values = [], []
    for step, (a, bb, ar, br, ids) in enumerate(batches(STEPS, GLOBAL_B)):
        out = objective(
            a[local],
            bb[local],
            ids[local],
            logit_scale=5.0,
            ctx=StepContext(epoch=step, step=step),
            reference=(ar[local], br[local]),
        )
        masks.append({k: v.clone() for k, v in out.keep_masks.items()})
        values.append(out.value)
    state = {k: v.clone() for k, v in objective.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"state": state, "masks": masks, "values": values}


def _worker(rank: int, world: int) -> dict:
    return {f"{k}/{m}": _run(k, m, rank, world) for k, m in SETUPS}


def _local_rows(mask: torch.Tensor, mode: str, rank: int, world: int) -> torch.Tensor:
    b = GLOBAL_B // world
    if mode == "image_text":
        return mask[rank * b : (rank + 1) * b]
    # SimCLR anchors are [z1; z2]: each rank holds its slice of both views
    return torch.cat([mask[rank * b : (rank + 1) * b], mask[GLOBAL_B + rank * b :][:b]])


@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path):
    results = run_distributed(_worker, world_size=2, tmp_path=tmp_path)
    for kind, mode in SETUPS:
        key = f"{kind}/{mode}"
        ref = _run(kind, mode, rank=0, world=1)
        removed = sum(int((~m).sum()) for step in ref["masks"] for m in step.values())
        assert removed > 0, f"{key}: nothing removed, the comparison would be vacuous"
        for rank in range(2):
            got = results[rank][key]
            for name, want in ref["state"].items():
                assert torch.equal(got["state"][name], results[0][key]["state"][name]), name
                torch.testing.assert_close(got["state"][name], want, rtol=1e-5, atol=1e-6)
            for step, step_masks in enumerate(ref["masks"]):
                for name, want in step_masks.items():
                    mine = got["masks"][step][name]
                    assert torch.equal(mine, _local_rows(want, mode, rank, 2)), (key, step, name)
            torch.testing.assert_close(torch.stack(got["values"]), torch.stack(ref["values"]))
