"""The one way every stage writes a table: TSV for people, Parquet for code, both atomic.

A rule's table appears under its final name only once complete (`atomic_path`), so Snakemake
and readers never see half a file. Stages differ only in the digits they print and in how a
missing value reads, which are arguments here rather than copies of the writer.
"""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plmdiff.core.runtime import atomic_path

# Every Parquet file plmdiff writes (samples, activation shards, tables).
PARQUET_COMPRESSION = "zstd"


def write_table(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    *,
    float_format: str | None = "%.6g",
    na_rep: str = "",
    index: bool = False,
) -> None:
    """Write `frame` as a tab-separated table (floats as `float_format`, None: full precision)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=index, float_format=float_format, na_rep=na_rep)


def write_parquet(
    frame: pd.DataFrame | pa.Table,
    path: str | os.PathLike,
    *,
    metadata: dict[bytes, bytes] | None = None,
    row_group_size: int | None = None,
) -> None:
    """Write `frame` as Parquet (PARQUET_COMPRESSION) without the pandas index; `metadata`
    joins the schema's."""
    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=PARQUET_COMPRESSION, row_group_size=row_group_size)
