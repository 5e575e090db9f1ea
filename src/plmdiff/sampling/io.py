"""Sample shards on disk: which indices a shard draws, and its Parquet table.

`results/samples/{model}/shard_NNN.parquet` (plmdiff.config.paths) holds every output of one
shard, truncated ones included, one row per sequence with the columns of SHARD_SCHEMA_FIELDS and
the job's settings as JSON under the `plmdiff` schema metadata key. plmdiff.sampling.filtering
reads them back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from plmdiff.core.errors import ConfigError
from plmdiff.core.fasta import sequence_id
from plmdiff.core.runtime import atomic_path
from plmdiff.core.tables import PARQUET_COMPRESSION
from plmdiff.sampling.settings import Sample

SHARD_SCHEMA_FIELDS = (
    ("seq_id", "string"),
    ("model", "string"),
    ("shard", "int32"),
    ("index", "int32"),
    ("sequence", "string"),
    ("ended", "bool_"),
    ("n_tokens", "int32"),
    ("length", "int32"),
    ("ppl", "float64"),
)


def shard_indices(n_sequences: int, shards: int, shard: int) -> list[int]:
    """Global sequence indices of one shard: contiguous blocks, so that the shards in order
    list 0..n_sequences-1 in order, whatever their number."""
    if not 0 <= shard < shards:
        raise ConfigError(f"sampling shard {shard} does not exist; sampling.shards is {shards}")
    return list(range(shard * n_sequences // shards, (shard + 1) * n_sequences // shards))


def shard_schema() -> pa.Schema:
    """The Arrow schema of a sample shard."""
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in SHARD_SCHEMA_FIELDS])


def samples_table(
    samples: Sequence[Sample], model: str, shard: int, metadata: Mapping[str, Any]
) -> pa.Table:
    """One shard's samples as an Arrow table (every output, truncated ones included)."""
    columns = {
        "seq_id": [sequence_id(model, shard, s.index) for s in samples],
        "model": [model] * len(samples),
        "shard": [shard] * len(samples),
        "index": [s.index for s in samples],
        "sequence": [s.sequence for s in samples],
        "ended": [s.ended for s in samples],
        "n_tokens": [s.n_tokens for s in samples],
        "length": [len(s.sequence) for s in samples],
        "ppl": [s.ppl for s in samples],
    }
    table = pa.table(columns, schema=shard_schema())
    return table.replace_schema_metadata({"plmdiff": json.dumps(dict(metadata), sort_keys=True)})


def write_samples(path: str | os.PathLike, table: pa.Table) -> None:
    """Write a shard table atomically (a killed job leaves nothing under `path`)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=PARQUET_COMPRESSION)
