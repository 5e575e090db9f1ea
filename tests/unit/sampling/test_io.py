"""plmdiff.sampling.io: shard indices and the shard Parquet table."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from plmdiff.core.errors import ConfigError
from plmdiff.sampling.io import SHARD_SCHEMA_FIELDS, samples_table, shard_indices, write_samples
from tests.unit.sampling.drawing import draw


def test_shard_indices_partition_in_order():
    for n, shards in [(10, 3), (48, 2), (3, 4), (1000, 7)]:
        parts = [shard_indices(n, shards, s) for s in range(shards)]
        assert [i for part in parts for i in part] == list(range(n))
    assert shard_indices(3, 4, 0) == []  # more shards than sequences: an empty shard
    with pytest.raises(ConfigError, match="shard 4 does not exist"):
        shard_indices(10, 4, 4)


def test_shard_table_round_trip(tmp_path, r0):
    samples = draw(r0, [4, 5, 6])
    table = samples_table(samples, "r0", 1, {"seed": 7})
    write_samples(tmp_path / "s.parquet", table)
    back = pq.read_table(tmp_path / "s.parquet")
    assert back.schema.names == [name for name, _ in SHARD_SCHEMA_FIELDS]
    assert json.loads(back.schema.metadata[b"plmdiff"]) == {"seed": 7}
    rows = back.to_pylist()
    assert [r["seq_id"] for r in rows] == ["r0_001_00004", "r0_001_00005", "r0_001_00006"]
    assert [r["length"] for r in rows] == [len(s.sequence) for s in samples]
    empty = samples_table([], "r0", 3, {})
    write_samples(tmp_path / "e.parquet", empty)
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0
