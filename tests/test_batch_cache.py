"""Values remembered on a batch (debiascl.batch_cache) are reused only for the very tensors they
came from: a new tensor object or an in-place write makes them stale, for the helper itself and
for its three users (the SimCLR layout record, the anchor groups, the mask counts)."""

from __future__ import annotations

import types

import torch

from debiascl.batch_cache import recall, remember
from debiascl.negatives.mask_counts import kept_negatives, negative_counts
from debiascl.pairs import excluded_columns, simclr_pairs
from debiascl.state.groups import anchor_groups


def test_recall_returns_the_value_only_for_the_same_unwritten_tensors():
    holder = types.SimpleNamespace()
    a, b = torch.zeros(3), torch.ones(2)
    value = object()
    assert recall(holder, "k", (a, b)) is None  # nothing remembered yet
    assert remember(holder, "k", (a, b), value) is value
    assert recall(holder, "k", (a, b)) is value  # reused, any number of times
    assert recall(holder, "k", (a, b)) is value
    assert recall(holder, "other", (a, b)) is None
    assert recall(holder, "k", (b, a)) is None  # the tensors are matched by position
    assert recall(holder, "k", (a,)) is None
    assert recall(holder, "k", (a.clone(), b)) is None  # equal values, another object
    b[0] = 1.0  # an in-place write, even of the same value
    assert recall(holder, "k", (a, b)) is None
    remember(holder, "k", (a, b), value)  # remembered again after the write
    assert recall(holder, "k", (a, b)) is value
    a.add_(1.0)
    assert recall(holder, "k", (a, b)) is None


def _batch(b: int = 5):
    g = torch.Generator().manual_seed(0)
    return simclr_pairs(
        torch.randn(b, 4, generator=g), torch.randn(b, 4, generator=g), torch.arange(b)
    )


def test_anchor_groups_follow_new_id_tensors_and_in_place_writes():
    batch = _batch()
    groups = anchor_groups(batch)
    assert groups.layout == "two_views" and anchor_groups(batch) is groups  # grouped once
    batch.anchor_ids = torch.arange(10)  # a new tensor (same _version 0): one row per id
    fresh = anchor_groups(batch)
    assert fresh.layout == "general" and fresh.ids.tolist() == list(range(10))
    assert anchor_groups(batch) is fresh
    batch.anchor_ids[5:] = torch.arange(5)  # written in place: the two views share ids again
    again = anchor_groups(batch)
    assert again.layout == "two_views" and again.ids.tolist() == list(range(5))


def test_layout_record_and_mask_counts_follow_the_masks():
    batch = _batch()
    cols = excluded_columns(batch)
    assert cols is not None and excluded_columns(batch) is cols
    counts = negative_counts(batch)
    assert negative_counts(batch) is counts and counts.tolist() == [8] * 10
    # a new neg_mask object with the same values: no layout record, counts recomputed
    batch.neg_mask = batch.neg_mask.clone()
    assert excluded_columns(batch) is None
    assert negative_counts(batch) is not counts
    assert torch.equal(negative_counts(batch), batch.neg_mask.sum(1))
    keep = torch.rand(batch.neg_mask.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    kept, kept_n = kept_negatives(batch, keep)
    assert kept_negatives(batch, keep)[0] is kept and kept_negatives(batch, keep)[1] is kept_n
    keep[2].fill_(True)  # written in place: the remembered AND is stale
    kept2, kept_n2 = kept_negatives(batch, keep)
    want = batch.neg_mask & keep
    assert torch.equal(kept2, want) and torch.equal(kept_n2, want.sum(1))
    assert kept_n2[2] == 8 and not torch.equal(kept2, kept)
    batch.neg_mask[2, 3] = False  # the negatives written in place: counts follow
    want = batch.neg_mask & keep
    kept3, kept_n3 = kept_negatives(batch, keep)
    assert torch.equal(kept3, want) and kept_n3[2] == 7
    assert negative_counts(batch)[2] == 7
    assert torch.equal(negative_counts(batch), batch.neg_mask.sum(1))
