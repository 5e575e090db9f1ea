"""plmdiff.activations.format: column names, vectors, and files any Parquet reader reads."""

from __future__ import annotations

import numpy as np
import pytest

from plmdiff.activations.format import pooled_column
from plmdiff.activations.writers import TokenWriter
from plmdiff.core.errors import DataError
from tests.unit.activations.files import (
    META,
    random_seqs,
    write_pooled,
    write_tokens,
)


def test_pooled_column_names():
    assert pooled_column("last", 3) == "last_03"
    assert pooled_column("mean", 36) == "mean_36"
    with pytest.raises(DataError, match="pooling 'max'"):
        pooled_column("max", 1)


def test_float16_overflow_asks_for_float32(tmp_path):
    with (
        pytest.raises(DataError, match=r"activations.dtype: float32"),
        TokenWriter(
            tmp_path / "t.parquet", layer=1, d_model=2, dtype="float16", metadata=META
        ) as w,
    ):
        w.write(["s"], ["AC"], np.array([[1.0, 1e6], [0.0, 0.0]], dtype=np.float32))
    assert not (tmp_path / "t.parquet").exists()
    assert not list(tmp_path.iterdir()), "the temporary file must be removed"


def test_duckdb_polars_pandas_read_both_formats(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    import pandas as pd

    write_pooled(tmp_path / "p.parquet", np.random.default_rng(0), n=6, d=8)
    seqs = random_seqs(np.random.default_rng(1), 5)
    write_tokens(tmp_path / "layer_01" / "part-00000.parquet", seqs, dtype="float16")
    write_tokens(tmp_path / "layer_01" / "part-00001.parquet", {"x": "MKV"}, dtype="float16")
    n_tokens = sum(map(len, seqs.values())) + 3

    glob = str(tmp_path / "layer_01" / "part-*.parquet")
    con = duckdb.connect()
    cols = {row[0]: row[1] for row in con.sql(f"DESCRIBE SELECT * FROM '{glob}'").fetchall()}
    assert cols["seq_id"] == "VARCHAR" and cols["pos"] == "INTEGER" and cols["residue"] == "VARCHAR"
    assert cols["act"].startswith("FLOAT")
    assert con.sql(f"SELECT count(*) FROM '{glob}'").fetchall()[0][0] == n_tokens
    per_seq = dict(con.sql(f"SELECT seq_id, max(pos) + 1 FROM '{glob}' GROUP BY seq_id").fetchall())
    assert per_seq == {**{k: len(v) for k, v in seqs.items()}, "x": 3}
    assert len(con.sql(f"SELECT act FROM '{glob}' LIMIT 1").fetchall()[0][0]) == 4
    kv = dict(con.sql(f"SELECT key, value FROM parquet_kv_metadata('{glob}')").fetchall())
    assert kv[b"embedder_fingerprint"] == b'"abc123"'
    pooled_cols = {
        r[0] for r in con.sql(f"DESCRIBE SELECT * FROM '{tmp_path / 'p.parquet'}'").fetchall()
    }
    assert {"seq_id", "model", "length", "last_00", "mean_02"} <= pooled_cols

    frame = pl.read_parquet(glob)
    assert frame.height == n_tokens
    assert frame.schema["act"] == pl.Array(pl.Float16, 4)
    assert frame.schema["pos"] == pl.Int32
    pooled_frame = pl.read_parquet(tmp_path / "p.parquet")
    assert pooled_frame.schema["last_01"] == pl.Array(pl.Float16, 8) and pooled_frame.height == 6

    frame = pd.read_parquet(tmp_path / "layer_01")
    assert len(frame) == n_tokens and len(frame["act"].iloc[0]) == 4
