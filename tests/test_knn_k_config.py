"""``eval.knn_k`` says what the kNN monitor does with it (issue 10, item 20).

k is capped at the smallest class's training count; the config field's description must say so
(``debiascl`` users read it from the schema), and the behaviour it describes must hold.
"""

from __future__ import annotations

import pytest
import torch

from debiascl.config.schema import EvalConfig
from debiascl.eval import knn_eval


def test_knn_k_description_states_the_cap_and_the_report():
    text = EvalConfig.model_fields["knn_k"].description or ""
    assert "smallest class" in text and "knn.k" in text


def test_the_described_cap_holds():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 30 + [1] * 7)  # smallest class: 7 training samples
    x = torch.randn(37, 4, generator=g) + 3 * torch.nn.functional.one_hot(y, 4)
    with pytest.warns(UserWarning, match="k=7"):
        out = knn_eval(x, y, x, y, k=EvalConfig().knn_k)
    assert out["k"] == 7
