"""Projection heads (SimCLR: Chen et al., 2020, Sec. 2.1)."""

from __future__ import annotations

from torch import nn


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """Linear -> BatchNorm -> ReLU -> Linear, mapping features (b, in_dim) to (b, out_dim)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )
