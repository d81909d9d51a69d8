"""``scalar_leaves``: the TensorBoard scalars of a nested evaluation result."""

import math

from debiascl.train.logging import scalar_leaves


def test_scalar_leaves_keeps_finite_numbers_under_slash_joined_tags():
    tree = {
        "knn": {"accuracy": 0.75, "k": 200},
        "linear_probe": {"10%": {"mean": 0.5, "per_seed": [0.5], "C": [0.01]}},
        "zero_shot": {"accuracy": math.nan, "auc": math.inf, "ok": True},
        "name": "run",
    }
    assert scalar_leaves(tree) == {
        "knn/accuracy": 0.75,
        "knn/k": 200.0,
        "linear_probe/10%/mean": 0.5,
    }
    assert scalar_leaves({"a": {"b": 1}}, prefix="x/") == {"x/a/b": 1.0}
