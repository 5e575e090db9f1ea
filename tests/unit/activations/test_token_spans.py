"""Token tables with residue spans: BPE rows of several residues, the one-token-per-residue
case, files of token format 1 (no `pos_end`), and spans that do not tile a sequence."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plmdiff.activations.readers import iter_token_batches, read_metadata
from plmdiff.activations.writers import TokenWriter
from plmdiff.diff.feature_stats import complete_sequences
from tests.unit.activations.files import META


def _write(path, seq_ids, residues, acts, spans=None):
    with TokenWriter(path, layer=1, d_model=2, dtype="float32", metadata=META) as w:
        w.write(seq_ids, residues, acts, spans=spans)


def test_bpe_rows_hold_their_residues_and_spans(tmp_path):
    spans = [np.array([[0, 2], [2, 3], [3, 6]]), np.array([[0, 1], [1, 4]])]
    acts = np.arange(10, dtype=np.float32).reshape(5, 2)
    _write(tmp_path / "part-00000.parquet", ["a", "b"], ["MKVLAG", "WPYC"], acts, spans)
    (batch,) = iter_token_batches([tmp_path], batch_rows=100)
    assert batch.seq_id.tolist() == ["a", "a", "a", "b", "b"]
    assert batch.pos.tolist() == [0, 2, 3, 0, 1]
    assert batch.pos_end.tolist() == [2, 3, 6, 1, 4]
    assert batch.residue.tolist() == ["MK", "V", "LAG", "W", "PYC"]
    np.testing.assert_array_equal(batch.act, acts)
    assert read_metadata(tmp_path)["format_version"] == 2
    first, last = complete_sequences([batch], "x")  # the last sequence is carried to the end
    assert (first.residues, last.residues) == (["MKVLAG"], ["WPYC"])
    assert first.res_starts.tolist() == [0, 6] and last.res_starts.tolist() == [0, 4]
    # the row of each residue: what maps a residue window back to token activations
    assert first.residue_row.tolist() == [0, 0, 1, 2, 2, 2]
    assert last.residue_row.tolist() == [0, 1, 1, 1]


def test_one_residue_spans_write_what_the_character_path_writes(tmp_path):
    acts = np.ones((5, 2), dtype=np.float32)
    spans = [np.array([[0, 1], [1, 2], [2, 3]]), np.array([[0, 1], [1, 2]])]
    _write(tmp_path / "a" / "part-00000.parquet", ["a", "b"], ["MKV", "WP"], acts, spans)
    _write(tmp_path / "b" / "part-00000.parquet", ["a", "b"], ["MKV", "WP"], acts)
    a, b = (pq.read_table(tmp_path / d / "part-00000.parquet") for d in "ab")
    assert a.equals(b)
    assert a.column("pos_end").to_pylist() == [1, 2, 3, 1, 2]


@pytest.mark.parametrize("spans", [[[0, 2], [1, 3]], [[0, 1], [2, 3]], [[0, 2]], [[0, 0], [0, 3]]])
def test_spans_that_do_not_tile_are_refused(tmp_path, spans):
    with pytest.raises(ValueError, match="do not tile a 3-residue sequence"):
        _write(
            tmp_path / "part-00000.parquet",
            ["a"],
            ["MKV"],
            np.zeros((len(spans), 2), np.float32),
            [np.array(spans)],
        )
    assert not (tmp_path / "part-00000.parquet").exists()


def test_format_1_files_read_with_one_residue_per_token(tmp_path):
    table = pa.table(
        {
            "seq_id": ["a", "a", "b"],
            "pos": pa.array([0, 1, 0], pa.int32()),
            "residue": ["M", "K", "V"],
            "act": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(6, np.float32)), 2),
        }
    )
    pq.write_table(table, tmp_path / "part-00000.parquet")
    (batch,) = iter_token_batches([tmp_path], batch_rows=100)
    assert batch.pos_end.tolist() == [1, 2, 1]
    assert [c.residues for c in complete_sequences([batch], "x")] == [["MK"], ["V"]]
