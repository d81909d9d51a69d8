"""Both CLIP directions of the SogCLR objective in one stacked pass equal one pass per direction.

Without a detector, :class:`ContrastiveObjective` runs image -> text and text -> image as one
(2b, B) batch (``clip_pairs_stacked``); the two-direction path is what it ran before. Over several
training steps (every id revisited, labels for the statistics) both must give the same loss and
value bits, the same u tables, removal statistics, logs and keep-masks, and the same gradients;
with a detector the objective must keep the per-direction path. Under 2 gloo processes the
stacked path must equal one process.
"""

from __future__ import annotations

import pytest
import torch

from debiascl.losses.global_contrastive import exp_all_but_positive, masked_exp
from debiascl.negatives.diagnostics import DetectionStats
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.pairs import clip_pairs, clip_pairs_stacked
from distributed_helpers import run_distributed

N, B, DIM = 160, 128, 8


class TwoPassObjective(ContrastiveObjective):
    """The per-direction path (what every objective with a detector runs)."""

    def _stacks_directions(self, a: torch.Tensor) -> bool:
        return False


def _objective(cls: type, **kw) -> ContrastiveObjective:
    loss = GlobalContrastiveLoss(N, mode="image_text", gamma=0.6, gamma_schedule="cosine", **kw)
    return cls("image_text", loss, num_samples=N)


def _steps(obj: ContrastiveObjective, world: int = 1, rank: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(7)
    out = []
    for step in range(4):
        x, y = torch.randn(B, DIM, generator=gen), torch.randn(B, DIM, generator=gen)
        ids = torch.randperm(N, generator=gen)[:B]
        labels = torch.randint(0, 3, (B,), generator=gen)
        b = B // world
        local = slice(rank * b, (rank + 1) * b)
        a, c = x[local].clone().requires_grad_(), y[local].clone().requires_grad_()
        training = step != 2  # one evaluation step: tables must stay as they are
        ctx = StepContext(step=step, progress=step / 4, training=training)
        res = obj(a, c, ids[local], labels=labels[local], logit_scale=torch.tensor(12.0), ctx=ctx)
        res.loss.backward()
        out.append(
            {
                "loss": res.loss.detach(),
                "value": res.value,
                "logs": res.logs,
                "masks": {k: v.clone() for k, v in res.keep_masks.items()},
                "grad_a": a.grad,
                "grad_c": c.grad,
                "tables": {k: t.data.clone() for k, t in obj.loss_fn.tables.items()},
                "stats": obj.stats.state(),
            }
        )
    return out


def _assert_same(got: list[dict], ref: list[dict], grad_tol: float = 0.0) -> None:
    for g, r in zip(got, ref, strict=True):
        assert torch.equal(g["loss"], r["loss"])
        assert torch.equal(g["value"], r["value"])
        assert g["logs"] == r["logs"]
        assert g["masks"].keys() == r["masks"].keys()
        assert all(torch.equal(g["masks"][k], r["masks"][k]) for k in r["masks"])
        assert g["tables"].keys() == r["tables"].keys()
        assert all(torch.equal(g["tables"][k], r["tables"][k]) for k in r["tables"])
        assert torch.equal(g["stats"], r["stats"])
        for key in ("grad_a", "grad_c"):
            torch.testing.assert_close(g[key], r[key], rtol=0.0, atol=grad_tol)


def test_stacked_batch_rows_equal_the_two_directions():
    gen = torch.Generator().manual_seed(3)
    image, text = torch.randn(B, DIM, generator=gen), torch.randn(B, DIM, generator=gen)
    ids, labels = torch.randperm(N, generator=gen)[:B], torch.randint(0, 3, (B,), generator=gen)
    i2t, t2i = clip_pairs(image, text, ids, labels)
    st = clip_pairs_stacked(image, text, ids, labels)
    assert st.parts == (i2t.name, t2i.name)
    assert st.global_anchors == i2t.global_anchors
    for field in ("sim", "pos_index", "neg_mask", "anchor_ids", "anchor_labels"):
        assert torch.equal(
            getattr(st, field), torch.cat([getattr(i2t, field), getattr(t2i, field)])
        ), field
    assert torch.equal(st.candidate_ids, i2t.candidate_ids)
    assert torch.equal(st.candidate_labels, i2t.candidate_labels)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_exp_all_but_positive_equals_masked_exp(scale, dtype):
    gen = torch.Generator().manual_seed(5)
    sim = (2 * torch.rand(37, 19, generator=gen) - 1).to(dtype)
    before = sim.clone()
    pos = torch.randint(0, 19, (37,), generator=gen)
    mask = torch.ones(37, 19, dtype=torch.bool)
    mask[torch.arange(37), pos] = False
    s = torch.tensor(scale)
    for got, ref in zip(exp_all_but_positive(sim, s, pos), masked_exp(sim, s, mask), strict=True):
        assert torch.equal(got, ref)
    assert torch.equal(sim, before)  # the input is not written


def test_unlabelled_clip_stats_count_negatives_without_scanning():
    gen = torch.Generator().manual_seed(4)
    image, text = torch.randn(B, DIM, generator=gen), torch.randn(B, DIM, generator=gen)
    ids = torch.randperm(N, generator=gen)[:B]
    stacked = clip_pairs_stacked(image, text, ids)
    i2t, _ = clip_pairs(image, text, ids)
    plain = clip_pairs(image, text, ids)[1]
    plain.negatives_all_but_positive = False  # counted by scanning the mask
    fast, scanned = DetectionStats(), DetectionStats()
    for _ in range(2):
        fast.update(stacked, torch.ones_like(stacked.neg_mask), keeps_all=True)
        scanned.update(i2t, torch.ones_like(i2t.neg_mask))
        scanned.update(plain, torch.ones_like(plain.neg_mask), keeps_all=True)
    assert fast.state()[1] == 2 * 2 * B * (B - 1)
    assert torch.equal(fast.state(), scanned.state())
    assert fast.compute() == scanned.compute()
    fast.reset()
    assert fast.state()[1] == 0


def test_stacked_objective_equals_two_passes():
    stacked, two = _objective(ContrastiveObjective), _objective(TwoPassObjective)
    x = torch.zeros(B, DIM)
    assert stacked._stacks_directions(x) and not two._stacks_directions(x)
    # a batch size off the SIMD blocks keeps the per-direction path (bit-identical results)
    assert not stacked._stacks_directions(torch.zeros(B - 8, DIM))
    got, ref = _steps(stacked), _steps(two)
    # the tables really moved (first visits, then moving averages), and not at the eval step
    assert not torch.equal(ref[0]["tables"]["image_to_text"], ref[1]["tables"]["image_to_text"])
    assert torch.equal(ref[1]["tables"]["text_to_image"], ref[2]["tables"]["text_to_image"])
    _assert_same(got, ref)
    assert stacked.epoch_diagnostics() == pytest.approx(two.epoch_diagnostics(), nan_ok=True)


def test_detector_or_one_direction_keeps_the_per_direction_path():
    loss = GlobalContrastiveLoss(N, mode="image_text")
    glofnd = ContrastiveObjective(
        "image_text", loss, GloFNDDetector(N, alpha=0.1, mode="image_text"), num_samples=N
    )
    x = torch.zeros(B, DIM)
    assert not glofnd._stacks_directions(x)
    one = ContrastiveObjective(
        "image_text",
        GlobalContrastiveLoss(N, mode="image_text", directions=("image_to_text",)),
        num_samples=N,
        directions=("image_to_text",),
    )
    assert not one._stacks_directions(x)


def _worker(rank: int, world_size: int, sharding: str) -> dict:
    torch.manual_seed(0)
    return {"steps": _steps(_objective(ContrastiveObjective, sharding=sharding), world_size, rank)}


@pytest.mark.distributed
@pytest.mark.parametrize("sharding", ["replicated", "sharded"])
def test_stacked_objective_under_ddp_equals_one_process(tmp_path, sharding):
    world = 2
    results = run_distributed(_worker, world_size=world, args=(sharding,), tmp_path=tmp_path)
    ref = _steps(_objective(TwoPassObjective))
    b = B // world
    for rank, res in enumerate(results):
        for g, r in zip(res["steps"], ref, strict=True):
            torch.testing.assert_close(g["value"], r["value"], rtol=1e-6, atol=1e-7)
            # each rank's loss is world x its local share; gradients world x the global ones
            local = slice(rank * b, (rank + 1) * b)
            for key in ("grad_a", "grad_c"):
                torch.testing.assert_close(g[key], world * r[key][local], rtol=1e-5, atol=1e-6)
            if sharding == "replicated":
                for name, table in r["tables"].items():
                    torch.testing.assert_close(g["tables"][name], table, rtol=1e-6, atol=1e-6)
