"""Bad tensors passed to the public API: a DebiasclError (exit code 2 in the CLI) whose message
names the problem. Catalogue rows "API-*" of docs/reliability.md."""

from __future__ import annotations

import pytest
import torch

from debiascl.errors import DataError, DebiasclError
from debiascl.objectives import ContrastiveObjective
from debiascl.objectives.infonce_loss import InfoNCELoss

N = 10


@pytest.fixture
def objective() -> ContrastiveObjective:
    return ContrastiveObjective("image_image", InfoNCELoss(), num_samples=N)


CASES = {
    "views_of_different_batch": (
        (torch.randn(4, 8), torch.randn(5, 8), torch.arange(4)),
        DebiasclError,
        "must have the same shape, got (4, 8) and (5, 8)",
    ),
    "views_of_different_dim": (
        (torch.randn(4, 8), torch.randn(4, 7), torch.arange(4)),
        DebiasclError,
        "must have the same shape",
    ),
    "embeddings_not_2d": (
        (torch.randn(4, 8, 2), torch.randn(4, 8, 2), torch.arange(4)),
        DebiasclError,
        "must have shape (batch, dim)",
    ),
    "ids_wrong_length": (
        (torch.randn(4, 8), torch.randn(4, 8), torch.arange(3)),
        DebiasclError,
        "sample ids must have shape (4,)",
    ),
    "ids_float": (
        (torch.randn(4, 8), torch.randn(4, 8), torch.arange(4).float()),
        DataError,
        "must be an integer tensor",
    ),
    "id_out_of_range": (
        (torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0, 1, 2, N + 2])),
        DataError,
        f"sample id {N + 2} is outside [0, {N})",
    ),
    "id_negative": (
        (torch.randn(4, 8), torch.randn(4, 8), torch.tensor([-1, 1, 2, 3])),
        DataError,
        "sample id -1 is outside",
    ),
    "ids_duplicated": (
        (torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0, 1, 1, 2])),
        DataError,
        "duplicate sample ids",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tensors_raise_a_user_error(objective, case):
    args, error, needle = CASES[case]
    with pytest.raises(error) as info:
        objective(*args)
    assert info.value.exit_code == 2
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_call_passes(objective):
    """Control: the same objective accepts well-formed input (the cases above are the cause)."""
    out = objective(torch.randn(4, 8), torch.randn(4, 8), torch.arange(4))
    assert torch.isfinite(out.loss)
