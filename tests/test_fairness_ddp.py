"""FairnessAudit: accumulation over batches and over 2 real gloo ranks equals one process."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from debiascl.errors import DataError
from debiascl.fairness.accumulate import FairnessAudit

NAMES = {"sex": ["F", "M"], "race": ["A", "B", "W"]}
KW = {"intersections": [("sex", "race")], "bootstrap": 20, "seed": 1}


def _data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g) + 1.2 * torch.nn.functional.one_hot(y, 3)
    attrs = torch.stack(
        [torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], 1
    )
    attrs[::17, 1] = -1
    return logits.softmax(-1), y, attrs


def _audit():
    return FairnessAudit(["sex", "race"], value_names=NAMES, class_names=["x", "y", "z"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        p, y, a = _data()
        # unequal shards: rank 0 gets rows [0, 100), rank 1 rows [100, 240), in uneven batches
        lo, hi = (0, 100) if rank == 0 else (100, 240)
        audit = _audit()
        for start in range(lo, hi, 33):
            stop = min(start + 33, hi)
            audit.update(p[start:stop], y[start:stop], a[start:stop])
        rep = audit.compute("argmax", **KW)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(rep, f, sort_keys=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p, y, a = _data()
    single = _audit()
    single.update(p, y, a)
    ref = json.loads(json.dumps(single.compute("argmax", **KW), sort_keys=True))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1
    assert r0["n"] == 240
    assert _close(r0, ref)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-6, atol=1e-9))
    return a == b


def test_batches_equal_one_call_and_dict_attrs():
    p, y, a = _data()
    one, many = _audit(), _audit()
    one.update(p, y, a)
    for s in range(0, 240, 50):
        many.update(
            p[s : s + 50], y[s : s + 50], {"sex": a[s : s + 50, 0], "race": a[s : s + 50, 1]}
        )
    assert _close(one.compute("argmax"), many.compute("argmax"))
    rep = one.compute("argmax")
    assert set(rep["attributes"]["race"]["per_class"]["x"]["groups"]) == {"A", "B", "W"}
    assert rep["attributes"]["race"]["n_missing"] == int((a[:, 1] == -1).sum())


def test_audit_errors():
    p, y, a = _data(30)
    audit = _audit()
    with pytest.raises(DataError, match="before any update"):
        audit.compute(0.5)
    with pytest.raises(DataError, match="one of each"):
        audit.update(p, y[:-1], a)
    with pytest.raises(DataError, match="missing from the batch"):
        audit.update(p, y, {"sex": a[:, 0]})
    bad = a.clone()
    bad[0, 0] = 2  # sex has only codes 0, 1
    audit.update(p, y, bad)
    with pytest.raises(DataError, match="not seen in training"):
        audit.compute("argmax")
