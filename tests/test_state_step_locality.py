"""A training step's work on the per-sample tables is O(batch), never O(N) (issue 15).

Two checks on a SogCLR + GloFND step (forward and backward), neither a timing: every aten op
that reads or writes a table's storage is a row gather/scatter of at most one global batch of
rows (a whole-table sum, clone, copy, mask or nonzero would show by name), and every row the
step did not visit keeps its bits.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from debiascl.negatives.glofnd import GloFNDDetector
from debiascl.objectives import ContrastiveObjective, StepContext
from debiascl.objectives.sogclr_loss import GlobalContrastiveLoss
from debiascl.state import SampleTable

N, B, D = 20_000, 16, 8
VIEWS = frozenset({"view", "select", "slice", "as_strided", "alias", "detach", "unbind"})
ROW_OPS = frozenset({"index_select", "index_copy_", "index_copy"})


class TableAccess(TorchDispatchMode):
    """Records every non-view aten op whose inputs or outputs share a table's storage, with
    the number of rows it indexes (None for an op that is not a row gather/scatter)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        tables = [m.data for m in module.modules() if isinstance(m, SampleTable)]
        assert tables, "no per-sample tables in the module"
        self.storages = {t.untyped_storage().data_ptr() for t in tables}
        self.calls: list[tuple[str, int | None]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        if name not in VIEWS and any(
            t.untyped_storage().data_ptr() in self.storages for t in tensors
        ):
            self.calls.append((name, args[2].numel() if name in ROW_OPS else None))
        return out

    def whole_table_ops(self, max_rows: int) -> list[tuple[str, int | None]]:
        """The recorded calls that are not row gathers/scatters of at most ``max_rows`` rows."""
        return [c for c in self.calls if c[1] is None or c[1] > max_rows]


def _objective(mode: str) -> ContrastiveObjective:
    return ContrastiveObjective(
        mode,
        GlobalContrastiveLoss(N, mode=mode),
        GloFNDDetector(N, alpha=0.1, mode=mode, init="batch_quantile"),
        num_samples=N,
    )


def _tables(module: nn.Module) -> list[SampleTable]:
    return [m for m in module.modules() if isinstance(m, SampleTable)]


def test_the_probe_sees_whole_table_work_and_lets_row_access_pass():
    table = SampleTable(N, ("a", "b"))
    ids = torch.tensor([3, 70, 19_999])
    with TableAccess(table) as probe:
        table.write(ids, table.read(ids) + 1.0)
    assert probe.calls and probe.whole_table_ops(len(ids)) == []
    for work in (
        lambda: table.data.sum(),
        lambda: table.data.clone(),
        lambda: table.data[:, 1].nonzero(),
        lambda: table.data.mul_(1.0),
    ):
        with TableAccess(table) as probe:
            work()
        assert probe.whole_table_ops(len(ids)), "a whole-table op went unseen"


@pytest.mark.parametrize("mode", ["image_image", "image_text"])
def test_sogclr_glofnd_steps_touch_only_the_batch_rows(mode: str):
    torch.manual_seed(0)
    objective = _objective(mode)
    gen = torch.Generator().manual_seed(1)
    for t in _tables(objective):  # distinct values in every row, so any change shows
        t.data.copy_(torch.rand(t.data.shape, generator=gen))
        t.data[:, t.column("visits")] = 1.0  # visited before: the steady-state path
    before = [t.data.clone() for t in _tables(objective)]
    visited = torch.randperm(N, generator=gen)[: 3 * B].view(3, B)
    with TableAccess(objective) as probe:
        for ids in visited:
            a = torch.randn(B, D, requires_grad=True)
            b = torch.randn(B, D, requires_grad=True)
            out = objective(a, b, ids, logit_scale=5.0, ctx=StepContext())
            out.loss.backward()
    assert probe.whole_table_ops(B) == [], probe.whole_table_ops(B)
    assert {name for name, _ in probe.calls} >= {"index_select", "index_copy_"}
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[visited.flatten()] = False
    for t, old in zip(_tables(objective), before, strict=True):
        assert torch.equal(t.data[untouched], old[untouched])
        visits = t.column("visits")
        assert torch.equal(t.data[visited.flatten(), visits], old[visited.flatten(), visits] + 1)
