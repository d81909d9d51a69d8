"""A per-sample table never stores NaN/inf rows (a skipped NaN step must not poison it)."""

from __future__ import annotations

import math

import torch

from debiascl.state.tables import SampleTable


def test_nonfinite_rows_keep_previous_values_and_finite_rows_are_written() -> None:
    table = SampleTable(6, ["lam", "m"], defaults=[1.0, 0.0], placement="cpu", sync=False)
    table.write(torch.tensor([0, 1, 2]), torch.tensor([[0.5, 0.1], [0.4, 0.2], [0.3, 0.3]]))
    table.write(
        torch.tensor([0, 1, 3]),
        torch.tensor([[math.nan, 9.0], [0.7, math.inf], [0.2, 0.4]]),
    )
    got = table.read(torch.arange(6))
    expected = torch.tensor(
        [[0.5, 0.1], [0.4, 0.2], [0.3, 0.3], [0.2, 0.4], [1.0, 0.0], [1.0, 0.0]]
    )
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(table.data).all()
