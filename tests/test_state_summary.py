"""Exact summaries of values spread over ranks (state/summary.py) and GloFND's diagnostics and
``converged`` start rule on sharded tables, against float64 references and replicated tables."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from debiascl.errors import ConfigError
from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import StepContext
from debiascl.pairs import clip_pairs
from debiascl.state.sharded import ShardedSampleTable
from debiascl.state.summary import key_value, ordered_keys, summarize
from distributed_helpers import run_distributed

QS = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)


def _awkward_values(n: int, seed: int) -> torch.Tensor:
    """float32 values with ties, both zeros, subnormals, huge and tiny magnitudes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(4 * torch.randn(n, generator=g))
    x[: n // 5] = torch.randint(-3, 4, (n // 5,), generator=g).float() / 4  # ties
    x[n // 5 : n // 5 + 6] = torch.tensor([0.0, -0.0, 1e-42, -3e-41, 3e38, -2e38])
    return x[torch.randperm(n, generator=g)]


def _reference(x: torch.Tensor) -> dict[str, float]:
    """float64 reference: exact rational mean/variance, sorted order statistics, torch.quantile."""
    vals = [Fraction(v) for v in x.double().tolist()]
    n = len(vals)
    mean = sum(vals, Fraction(0)) / n
    var = sum(((v - mean) ** 2 for v in vals), Fraction(0)) / (n - 1) if n > 1 else Fraction(0)
    q = torch.quantile(x.double(), QS).tolist()
    s = torch.sort(x.double()).values
    return {
        "count": float(n),
        "mean": float(mean),
        "std": math.sqrt(float(var)),
        "min": float(s[0]),
        "max": float(s[-1]),
        "p10": q[0],
        "p50": q[1],
        "p90": q[2],
    }


def _same(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == value, (key, got[key], value)  # bit for bit


@pytest.mark.parametrize("n", [1, 2, 3, 10, 4099])
def test_summary_is_exact_against_float64_reference(n: int) -> None:
    x = _awkward_values(max(n, 8), seed=n)[:n]
    _same(summarize(x, collective=False), _reference(x))


def test_ordered_keys_sort_like_floats_and_invert() -> None:
    x = _awkward_values(500, seed=3)
    keys = ordered_keys(x)
    assert torch.equal(x[torch.argsort(keys)], torch.sort(x).values)
    assert [key_value(int(k)) for k in keys[:50]] == x[:50].double().tolist()


def test_empty_and_non_finite_values_are_left_out() -> None:
    assert summarize(torch.empty(0), collective=False) == {"count": 0.0}
    x = torch.tensor([0.5, float("nan"), -0.25, float("inf"), 1.0])
    _same(summarize(x, collective=False), _reference(torch.tensor([0.5, -0.25, 1.0])))
    with pytest.raises(ConfigError, match="quantiles"):
        summarize(x, collective=False, quantiles=(0.5, 1.5))


def _glofnd_epochs(det: GloFNDDetector, rank: int, world: int, n: int, epochs: int) -> list:
    """Train ``det`` (image -> text) on stationary embeddings, every id once per epoch in global
    batches of 24 split over ranks; returns (masking per step, diagnostics) per epoch."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    part = slice(rank * 24 // world, (rank + 1) * 24 // world)
    out = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        steps = list(perm.split(24))
        steps[-1] = torch.cat([steps[-1], perm[: 24 - steps[-1].numel()]])  # distinct ids
        masking = []
        for ids in steps:
            a = base[ids] + 0.3 * torch.randn(24, 4, generator=g)
            b = base[ids] + 0.3 * torch.randn(24, 4, generator=g)
            ctx = StepContext(epoch=epoch)
            det(clip_pairs(a[part], b[part], ids[part])[0], ctx)
            masking.append(det.masking(ctx))
        out.append((masking, det.diagnostics()))
    return out


def _worker(rank: int, world: int) -> dict:
    # 1) summaries of values split unevenly over ranks (the last rank holds none)
    x = _awkward_values(3001, seed=world)
    cuts = [0, 1000, 3001] if world == 2 else [0, 2500, 3001, 3001]
    local = x[cuts[rank] : cuts[rank + 1]]
    result: dict = {"summary": summarize(local, collective=True)}
    result["summary_empty"] = summarize(local[:0], collective=True)
    # 2) GloFND with the converged start rule, replicated and sharded tables
    n = 239  # not a multiple of 2 or 3: uneven shards
    for sharding in ("replicated", "sharded"):
        det = GloFNDDetector(
            n,
            0.2,
            mode="image_text",
            directions=("image_to_text",),
            init="batch_quantile",
            lr=0.05,
            start_rule="converged",
            start_tolerance=0.01,
            update_start_epoch=0,
            start_epoch=1,
            sharding=sharding,
        )
        result[sharding] = _glofnd_epochs(det, rank, world, n, epochs=5)
        result[f"{sharding}/start_state"] = det.start_state.clone()
        table = det.tables["image_to_text"]
        if isinstance(table, ShardedSampleTable):
            result["local_rows"] = table.data.shape[0]
            result["full"] = table.full_table()  # the test's reference only
    return result


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_summaries_and_converged_rule_equal_replicated(tmp_path, world: int) -> None:
    results = run_distributed(_worker, world_size=world, tmp_path=tmp_path)
    want = _reference(_awkward_values(3001, seed=world))
    for res in results:
        _same(res["summary"], want)
        assert res["summary_empty"] == {"count": 0.0}
    first = results[0]
    full = first["full"]
    lam = full[:, 0][full[:, 3] > 0]
    ref = {f"lambda/image_to_text/{k}": v for k, v in _reference(lam).items() if k != "count"}
    ref["lambda/image_to_text/visited_fraction"] = lam.numel() / full.shape[0]
    _same(first["sharded"][-1][1], ref)  # the last epoch's diagnostics against float64
    starts = [next((e for e, (m, _) in enumerate(r["sharded"]) if any(m)), None) for r in results]
    assert starts[0] is not None and starts[0] >= 2  # it waited for the thresholds to settle
    for rank, res in enumerate(results):
        assert res["local_rows"] == len(range(rank, 239, world))
        assert starts[rank] == starts[0]
        sh, rep = res["sharded/start_state"], res["replicated/start_state"]
        torch.testing.assert_close(sh, rep, rtol=0, atol=0, equal_nan=True)
        for (m_sh, d_sh), (m_rep, d_rep) in zip(res["sharded"], res["replicated"], strict=True):
            assert m_sh == m_rep
            _same(d_sh, d_rep)
