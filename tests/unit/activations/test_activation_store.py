"""The activation Parquet formats: writers, atomicity, readers (pyarrow, DuckDB, polars, pandas)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from plmdiff.activations.store import (
    PooledWriter,
    TokenWriter,
    count_tokens,
    gather_pooled_parts,
    iter_token_batches,
    iter_tokens,
    load_pooled,
    pooled_column,
    pooled_layers,
    read_metadata,
    token_files,
    token_seq_ids,
)
from plmdiff.core.errors import DataError

META = {"embedder": "r0", "embedder_fingerprint": "abc123", "model": "r1"}
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def _pooled_rows(rng, n, layers, d):
    vectors = {
        pooled_column(p, layer): rng.normal(size=(n, d)).astype(np.float32)
        for layer in layers
        for p in ("last", "mean")
    }
    ids = [f"r1_000_{i:05d}" for i in range(n)]
    return ids, rng.integers(5, 50, size=n), vectors


def write_pooled(path, rng, n=10, layers=(0, 1, 2), d=8, dtype="float16", row_group_rows=None):
    ids, lengths, vectors = _pooled_rows(rng, n, layers, d)
    with PooledWriter(
        path,
        layers=layers,
        poolings=("last", "mean"),
        d_model=d,
        dtype=dtype,
        metadata=META,
        row_group_rows=row_group_rows,
    ) as writer:
        half = n // 2
        writer.write(ids[:half], "r1", lengths[:half], {k: v[:half] for k, v in vectors.items()})
        writer.write(ids[half:], "r1", lengths[half:], {k: v[half:] for k, v in vectors.items()})
    return ids, lengths, vectors


def write_tokens(path, seqs: dict[str, str], d=4, row_group_rows=7, dtype="float32", start=0):
    """Token rows whose act[:, 0] is a unique row number (start, start+1, ...)."""
    total = sum(map(len, seqs.values()))
    act = np.zeros((total, d), dtype=np.float32)
    act[:, 0] = np.arange(start, start + total)
    act[:, 1:] = np.random.default_rng(start).normal(size=(total, d - 1))
    with TokenWriter(
        path, layer=1, d_model=d, dtype=dtype, metadata=META, row_group_rows=row_group_rows
    ) as writer:
        writer.write(list(seqs), list(seqs.values()), act)
    return act


def random_seqs(rng, n, prefix="s", lo=3, hi=30):
    return {
        f"{prefix}{i:04d}": "".join(rng.choice(list(RESIDUES), size=rng.integers(lo, hi)))
        for i in range(n)
    }


def test_pooled_column_names():
    assert pooled_column("last", 3) == "last_03"
    assert pooled_column("mean", 36) == "mean_36"
    with pytest.raises(DataError, match="pooling 'max'"):
        pooled_column("max", 1)


def test_pooled_roundtrip_two_files_in_order(tmp_path):
    rng = np.random.default_rng(0)
    a = write_pooled(tmp_path / "a.parquet", rng, n=9, row_group_rows=4)
    b = write_pooled(tmp_path / "b.parquet", rng, n=5)
    m = load_pooled([tmp_path / "b.parquet", tmp_path / "a.parquet"], layer=2, pooling="mean")
    assert m.X.dtype == np.float32 and m.X.shape == (14, 8)
    expected = np.concatenate([b[2]["mean_02"], a[2]["mean_02"]])
    np.testing.assert_allclose(m.X, expected, rtol=2e-3, atol=2e-3)
    assert list(m.seq_id) == b[0] + a[0]
    assert list(m.model) == ["r1"] * 14
    np.testing.assert_array_equal(m.length, np.concatenate([b[1], a[1]]))
    assert pooled_layers(tmp_path / "a.parquet") == [0, 1, 2]


def test_pooled_metadata(tmp_path):
    write_pooled(tmp_path / "a.parquet", np.random.default_rng(0))
    meta = read_metadata(tmp_path / "a.parquet")
    assert meta["embedder"] == "r0" and meta["embedder_fingerprint"] == "abc123"
    assert meta["dtype"] == "float16" and meta["d_model"] == 8
    assert meta["layers"] == [0, 1, 2] and meta["poolings"] == ["last", "mean"]
    assert "BEFORE the final LayerNorm" in meta["layer_convention"]


def test_missing_layer_is_a_one_line_error(tmp_path):
    write_pooled(tmp_path / "a.parquet", np.random.default_rng(0))
    with pytest.raises(DataError, match=r"no column 'last_07'.*layers 0\.\.2"):
        load_pooled([tmp_path / "a.parquet"], layer=7, pooling="last")
    with pytest.raises(DataError, match="does not exist"):
        load_pooled([tmp_path / "missing.parquet"], layer=0, pooling="last")


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


def test_error_mid_write_leaves_no_file(tmp_path):
    path = tmp_path / "pooled.parquet"
    rng = np.random.default_rng(0)
    ids, lengths, vectors = _pooled_rows(rng, 4, [0], 8)
    with (
        pytest.raises(RuntimeError, match="boom"),
        PooledWriter(
            path, layers=[0], poolings=["last", "mean"], d_model=8, dtype="float16", metadata=META
        ) as writer,
    ):
        writer.write(ids, "r1", lengths, vectors)
        raise RuntimeError("boom")
    assert not path.exists() and not list(tmp_path.iterdir())


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from plmdiff.activations.store import TokenWriter
    w = TokenWriter(sys.argv[1], layer=1, d_model=64, dtype="float16",
                    metadata={"embedder": "r0"}, row_group_rows=100)
    for i in range(20):
        w.write([f"s{i}"], ["A" * 300], np.ones((300, 64), dtype=np.float32))
    os.kill(os.getpid(), signal.SIGKILL)  # dies mid-write: row groups written, no footer, no rename
    """
)


def test_sigkill_mid_write_leaves_nothing_a_rerun_accepts(tmp_path):
    layer_dir = tmp_path / "layer_01"
    final = layer_dir / "part-00000.parquet"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(final)], check=False)
    assert proc.returncode == -9
    assert not final.exists()
    leftovers = list(layer_dir.iterdir())
    assert leftovers and all(p.name.startswith(".") for p in leftovers), leftovers
    assert leftovers[0].stat().st_size > 0  # it really was killed after writing data
    with pytest.raises(DataError, match="no token part files"):
        token_files([layer_dir])
    # A rerun (a new process) writes the final file and clears the dead writer's leftover.
    write_tokens(final, {"s0": "ACD"})
    assert count_tokens([layer_dir]) == 3
    assert list(layer_dir.iterdir()) == [final]


def test_token_rows_labels_and_file_order(tmp_path):
    rng = np.random.default_rng(1)
    seqs = random_seqs(rng, 6)
    act = write_tokens(tmp_path / "layer_01" / "part-00000.parquet", seqs)
    batches = list(iter_token_batches([tmp_path / "layer_01"], batch_rows=10))
    assert all(len(b) == 10 for b in batches[:-1])
    ids = np.concatenate([b.seq_id for b in batches])
    pos = np.concatenate([b.pos for b in batches])
    res = np.concatenate([b.residue for b in batches])
    got = np.concatenate([b.act for b in batches])
    np.testing.assert_array_equal(got, act)
    assert list(ids) == [s for s, seq in seqs.items() for _ in seq]
    assert list(pos) == [i for seq in seqs.values() for i in range(len(seq))]
    assert "".join(res) == "".join(seqs.values())
    assert token_seq_ids([tmp_path / "layer_01"]) == sorted(seqs)
    meta = read_metadata(tmp_path / "layer_01")
    assert meta["layer"] == 1 and meta["plmdiff_format"] == "tokens"


def test_token_batches_filter_by_seq_ids(tmp_path):
    seqs = random_seqs(np.random.default_rng(2), 8)
    write_tokens(tmp_path / "l" / "part-00000.parquet", seqs)
    chosen = {"s0001", "s0005", "nope"}
    rows = [b for b in iter_token_batches([tmp_path / "l"], batch_rows=4, seq_ids=chosen)]
    ids = np.concatenate([b.seq_id for b in rows])
    assert set(ids) == {"s0001", "s0005"}
    assert len(ids) == len(seqs["s0001"]) + len(seqs["s0005"])
    assert count_tokens([tmp_path / "l"], chosen) == len(ids)


def _two_dirs(tmp_path, rng):
    a = random_seqs(rng, 40, prefix="a")
    b = random_seqs(rng, 30, prefix="b")
    n_a = sum(map(len, a.values()))
    write_tokens(tmp_path / "a" / "part-00000.parquet", dict(list(a.items())[:20]), start=0)
    first = sum(len(s) for s in list(a.values())[:20])
    write_tokens(tmp_path / "a" / "part-00001.parquet", dict(list(a.items())[20:]), start=first)
    write_tokens(tmp_path / "b" / "part-00000.parquet", b, start=n_a)
    return [tmp_path / "a", tmp_path / "b"], a, b, n_a + sum(map(len, b.values()))


def test_iter_tokens_one_epoch_covers_every_row_once_shuffled(tmp_path):
    dirs, _, _, total = _two_dirs(tmp_path, np.random.default_rng(3))
    batches = list(iter_tokens(dirs, 16, shuffle_buffer=50, seed=0))
    assert all(b.shape == (16, 4) and b.dtype.is_floating_point for b in batches[:-1])
    rows = np.concatenate([b.numpy()[:, 0] for b in batches]).astype(int)
    assert sorted(rows) == list(range(total))
    assert not np.array_equal(rows, np.arange(total))  # shuffled
    # Rows travel far from their file position (a buffer shuffle, not a local jitter).
    assert np.abs(rows - np.arange(total)).mean() > 30
    again = np.concatenate(
        [b.numpy()[:, 0] for b in iter_tokens(dirs, 16, shuffle_buffer=50, seed=0)]
    )
    np.testing.assert_array_equal(rows, again.astype(int))
    other = np.concatenate(
        [b.numpy()[:, 0] for b in iter_tokens(dirs, 16, shuffle_buffer=50, seed=1)]
    )
    assert not np.array_equal(rows, other.astype(int))


def test_iter_tokens_seq_ids_and_buffer_larger_than_data(tmp_path):
    dirs, a, b, _ = _two_dirs(tmp_path, np.random.default_rng(4))
    keep = {"a0003", "b0007", "b0029"}
    want = count_tokens(dirs, keep)
    for buffer in (8, 10_000):
        got = np.concatenate(
            [x.numpy() for x in iter_tokens(dirs, 5, shuffle_buffer=buffer, seed=0, seq_ids=keep)]
        )
        assert len(got) == want == len(a["a0003"]) + len(b["b0007"]) + len(b["b0029"])
        assert len(np.unique(got[:, 0])) == want


def test_iter_tokens_loop_repeats_epochs_with_full_batches(tmp_path):
    dirs, _, _, total = _two_dirs(tmp_path, np.random.default_rng(5))
    it = iter_tokens(dirs, 32, shuffle_buffer=64, seed=0, loop=True)
    n_batches = 3 * total // 32
    batches = [next(it) for _ in range(n_batches)]
    it.close()
    assert all(b.shape == (32, 4) for b in batches)
    counts = np.bincount(np.concatenate([b.numpy()[:, 0] for b in batches]).astype(int))
    assert len(counts) == total and counts.min() >= 1 and counts.max() <= 4
    with pytest.raises(DataError, match="no rows to loop over"):
        next(iter_tokens(dirs, 4, shuffle_buffer=4, seed=0, seq_ids=["none"], loop=True))


def test_iter_tokens_memory_is_bounded_by_the_buffer(tmp_path):
    d = 64
    rng = np.random.default_rng(6)
    layer = tmp_path / "layer"
    n_parts, per_part = 4, 50_000
    for k in range(n_parts):  # 200k rows x 64 float32 = 51 MB of activations
        seqs = {f"p{k}_{i:05d}": "A" * 100 for i in range(per_part // 100)}
        with TokenWriter(
            layer / f"part-{k:05d}.parquet",
            layer=1,
            d_model=d,
            dtype="float32",
            metadata=META,
            row_group_rows=1000,
        ) as w:
            w.write(
                list(seqs), list(seqs.values()), rng.normal(size=(per_part, d)).astype(np.float32)
            )
    total_bytes = n_parts * per_part * d * 4
    pool = pa.default_memory_pool()
    tracemalloc.start()
    arrow_base = pool.bytes_allocated()
    arrow_peak = 0
    n = 0
    for batch in iter_tokens([layer], 256, shuffle_buffer=4096, seed=0):
        n += len(batch)
        arrow_peak = max(arrow_peak, pool.bytes_allocated())
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == n_parts * per_part
    # Buffer 4096 x 64 x 4 = 1 MB, a row group 1000 x 64 x 4 = 0.26 MB (+ prefetched ones).
    assert numpy_peak < total_bytes / 8, numpy_peak
    assert arrow_peak - arrow_base < total_bytes / 8, arrow_peak - arrow_base


def test_iter_tokens_d_model_mismatch(tmp_path):
    write_tokens(tmp_path / "a" / "part-00000.parquet", {"s": "ACD"}, d=4)
    write_tokens(tmp_path / "b" / "part-00000.parquet", {"t": "ACD"}, d=6)
    with pytest.raises(DataError, match="disagree on d_model"):
        next(iter_tokens([tmp_path / "a", tmp_path / "b"], 2, shuffle_buffer=4, seed=0))


def test_empty_part_is_valid_and_readable(tmp_path):
    path = tmp_path / "l" / "part-00000.parquet"
    with TokenWriter(path, layer=1, d_model=4, dtype="float16", metadata=META):
        pass
    write_tokens(tmp_path / "l" / "part-00001.parquet", {"s": "ACDE"})
    assert count_tokens([tmp_path / "l"]) == 4
    assert sum(len(b) for b in iter_tokens([tmp_path / "l"], 3, shuffle_buffer=2, seed=0)) == 4


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


def test_partial_file_under_final_name_is_reported(tmp_path):
    path = tmp_path / "l" / "part-00000.parquet"
    write_tokens(path, {"s": "ACDEF"})
    path.write_bytes(path.read_bytes()[:100])  # e.g. a copy that was cut short
    with pytest.raises(DataError, match="not a complete Parquet file"):
        count_tokens([tmp_path / "l"])


def test_reader_ignores_temporary_siblings(tmp_path):
    layer = tmp_path / "l"
    write_tokens(layer / "part-00000.parquet", {"s": "ACD"})
    (layer / ".part-00001.parquet.tmp-123").write_bytes(b"PAR1 partial")
    assert token_files([layer]) == [layer / "part-00000.parquet"]
    assert Path(layer / ".part-00001.parquet.tmp-123").exists()


def _pooled_part(path, rng, n, fingerprint, part):
    ids, lengths, vectors = _pooled_rows(rng, n, [0, 1], 8)
    ids = [f"{path.stem}_{i}" for i in ids]
    meta = {**META, "embedder_fingerprint": fingerprint, "part": part, "n_parts": 2}
    with PooledWriter(
        path,
        layers=[0, 1],
        poolings=["last", "mean"],
        d_model=8,
        dtype="float16",
        metadata=meta,
        row_group_rows=3,
    ) as w:
        w.write(ids, "r1", lengths, vectors)
        w.close({"n_sequences": n, "n_tokens": int(lengths.sum()), "n_truncated": 0})
    return ids, vectors


def test_gather_concatenates_parts_and_merges_metadata(tmp_path):
    rng = np.random.default_rng(0)
    a_ids, a = _pooled_part(tmp_path / "a.parquet", rng, 5, "f", 0)
    b_ids, b = _pooled_part(tmp_path / "b.parquet", rng, 4, "f", 1)
    out = tmp_path / "all.parquet"
    assert gather_pooled_parts([tmp_path / "a.parquet", tmp_path / "b.parquet"], out) == 9
    m = load_pooled([out], 1, "mean")
    assert list(m.seq_id) == a_ids + b_ids
    np.testing.assert_allclose(m.X, np.concatenate([a["mean_01"], b["mean_01"]]), atol=2e-3)
    meta = read_metadata(out)
    assert meta["n_sequences"] == 9 and meta["n_parts"] == 2 and "part" not in meta
    assert meta["embedder_fingerprint"] == "f"


def test_gather_refuses_parts_of_different_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    _pooled_part(tmp_path / "a.parquet", rng, 3, "old", 0)
    _pooled_part(tmp_path / "b.parquet", rng, 3, "new", 1)
    out = tmp_path / "all.parquet"
    with pytest.raises(
        DataError, match=r"b.parquet differs from .*a.parquet in embedder_fingerprint"
    ):
        gather_pooled_parts([tmp_path / "a.parquet", tmp_path / "b.parquet"], out)
    assert not out.exists() and not list(tmp_path.glob(".all*"))
