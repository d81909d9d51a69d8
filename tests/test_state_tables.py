"""Per-sample tables: reads/writes by id, persistence, placement, bad input."""

from __future__ import annotations

import pytest
import torch

from debiascl.errors import CheckpointError, ConfigError, DataError
from debiascl.pairs import clip_pairs, simclr_pairs
from debiascl.state import SampleTable, anchor_groups, direction_names


def test_read_write_by_id_matches_a_plain_reference():
    table = SampleTable(20, ["a", "b", "visits"], defaults=[1.0, -2.0, 0.0])
    ref = torch.tensor([[1.0, -2.0, 0.0]] * 20)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        ids = torch.randperm(20, generator=g)[:7]
        rows = torch.randn(7, 3, generator=g)
        table.write(ids, rows)
        for i, row in zip(ids.tolist(), rows, strict=True):
            ref[i] = row
        probe = torch.randperm(20, generator=g)[:9]
        assert torch.equal(table.read(probe), ref[probe])
    assert torch.equal(table.data, ref)
    assert table.column("b") == 1
    with pytest.raises(KeyError):
        table.column("nope")


def test_reset_restores_defaults():
    table = SampleTable(5, ["x", "visits"], defaults=[0.5, 0.0])
    table.write(torch.tensor([0, 3]), torch.ones(2, 2))
    table.reset(torch.tensor([3]))
    assert table.data[3].tolist() == [0.5, 0.0] and table.data[0].tolist() == [1.0, 1.0]
    table.reset()
    assert torch.equal(table.data, torch.tensor([[0.5, 0.0]] * 5))


def test_state_dict_round_trip_is_exact_and_shape_mismatch_is_a_checkpoint_error():
    src = SampleTable(12, ["lambda", "m", "v", "visits"])
    src.write(torch.arange(12), torch.randn(12, 4, dtype=torch.float64).float())
    dst = SampleTable(12, ["lambda", "m", "v", "visits"])
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.data, src.data)
    with pytest.raises(CheckpointError, match="13 samples"):
        SampleTable(13, ["lambda", "m", "v", "visits"]).load_state_dict(src.state_dict())
    with pytest.raises(CheckpointError, match="columns"):
        SampleTable(12, ["log_u", "m", "v", "visits"]).load_state_dict(src.state_dict())


def test_tables_stay_float32_and_cpu_placement_ignores_moves():
    module = torch.nn.Module()
    module.dev = SampleTable(4, ["x"])
    module.host = SampleTable(4, ["x"], placement="cpu")
    module.double()
    assert module.dev.data.dtype == torch.float32 and module.host.data.dtype == torch.float32
    module.to("meta")
    assert module.dev.data.device.type == "meta"
    assert module.host.data.device.type == "cpu"


def test_bad_ids_are_data_errors():
    table = SampleTable(10, ["x"])
    with pytest.raises(DataError, match="outside"):
        table.read(torch.tensor([0, 10]))
    with pytest.raises(DataError, match="outside"):
        table.write(torch.tensor([-1]), torch.zeros(1, 1))
    with pytest.raises(DataError, match="duplicate"):
        table.write(torch.tensor([2, 5, 2]), torch.zeros(3, 1))
    with pytest.raises(DataError, match="integer"):
        table.read(torch.tensor([1.0]))
    with pytest.raises(DataError, match="shape"):
        table.write(torch.tensor([1, 2]), torch.zeros(2, 3))
    with pytest.raises(ConfigError):
        SampleTable(0, ["x"])
    with pytest.raises(ConfigError):
        SampleTable(3, ["x", "x"])


def test_anchor_groups_pool_views_and_directions():
    z = torch.randn(4, 3)
    ids = torch.tensor([7, 1, 4, 9])
    batch = simclr_pairs(z, z + 0.1, ids)
    groups = anchor_groups(batch)
    assert groups.layout == "two_views" and torch.equal(groups.ids, ids)
    x = torch.arange(8.0)
    assert torch.equal(groups.pool_sum(x), x[:4] + x[4:])
    assert torch.equal(groups.expand(torch.arange(4.0)), torch.arange(4.0).repeat(2))
    logs = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], dtype=torch.float64)
    want = torch.log((torch.exp(logs[:4]) + torch.exp(logs[4:])) / 2)
    torch.testing.assert_close(groups.pool_logmeanexp(logs), want)
    i2t, _ = clip_pairs(z, z, ids)
    assert anchor_groups(i2t).layout == "identity"
    # An irregular layout falls back to sorting and still pools correctly.
    batch.anchor_ids = torch.tensor([3, 3, 5, 3, 5, 6, 6, 6])
    general = anchor_groups(batch)
    assert general.layout == "general" and general.ids.tolist() == [3, 5, 6]
    assert general.pool_sum(torch.ones(8)).tolist() == [3.0, 2.0, 3.0]
    torch.testing.assert_close(
        general.pool_logmeanexp(logs),
        torch.stack([torch.log(torch.exp(logs[i]).mean()) for i in ([0, 1, 3], [2, 4], [5, 6, 7])]),
    )
    assert direction_names("image_image") == ("image",)
    assert direction_names("image_text", ("text_to_image",)) == ("text_to_image",)
    with pytest.raises(ConfigError):
        direction_names("image_text", ("sideways",))
