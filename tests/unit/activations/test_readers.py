"""plmdiff.activations.readers: pooled matrices, token rows in file order, unfinished files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plmdiff.activations.loader import count_tokens
from plmdiff.activations.readers import (
    iter_token_batches,
    load_pooled,
    pooled_layers,
    read_metadata,
    token_files,
    token_seq_ids,
)
from plmdiff.core.errors import DataError
from tests.unit.activations.files import (
    random_seqs,
    write_pooled,
    write_tokens,
)


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


def test_missing_layer_is_a_one_line_error(tmp_path):
    write_pooled(tmp_path / "a.parquet", np.random.default_rng(0))
    with pytest.raises(DataError, match=r"no column 'last_07'.*layers 0\.\.2"):
        load_pooled([tmp_path / "a.parquet"], layer=7, pooling="last")
    with pytest.raises(DataError, match="does not exist"):
        load_pooled([tmp_path / "missing.parquet"], layer=0, pooling="last")


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
