"""Per-sample state indexed by sample id: packed tables, their cross-rank sync, anchor grouping."""

from debiascl.state.groups import AnchorGroups, anchor_groups, direction_names
from debiascl.state.sharded import ShardedSampleTable, make_table
from debiascl.state.sync import all_gather_rows
from debiascl.state.tables import SampleTable

__all__ = [
    "AnchorGroups",
    "SampleTable",
    "ShardedSampleTable",
    "all_gather_rows",
    "anchor_groups",
    "direction_names",
    "make_table",
]
