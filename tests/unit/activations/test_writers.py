"""plmdiff.activations.writers: metadata, atomic files, gathering pooled parts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from plmdiff.activations.loader import count_tokens, iter_tokens
from plmdiff.activations.readers import (
    load_pooled,
    read_metadata,
    token_files,
)
from plmdiff.activations.writers import (
    MERGE_PENDING,
    PooledWriter,
    TokenWriter,
    gather_pooled_parts,
)
from plmdiff.core.errors import DataError
from tests.unit.activations.files import (
    META,
    pooled_part,
    pooled_rows,
    write_pooled,
    write_tokens,
)


def test_pooled_metadata(tmp_path):
    write_pooled(tmp_path / "a.parquet", np.random.default_rng(0))
    meta = read_metadata(tmp_path / "a.parquet")
    assert meta["embedder"] == "r0" and meta["embedder_fingerprint"] == "abc123"
    assert meta["dtype"] == "float16" and meta["d_model"] == 8
    assert meta["layers"] == [0, 1, 2] and meta["poolings"] == ["last", "mean"]
    assert "BEFORE the final LayerNorm" in meta["layer_convention"]


def test_error_mid_write_leaves_no_file(tmp_path):
    path = tmp_path / "pooled.parquet"
    rng = np.random.default_rng(0)
    ids, lengths, vectors = pooled_rows(rng, 4, [0], 8)
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
    from plmdiff.activations.writers import TokenWriter
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


def test_empty_part_is_valid_and_readable(tmp_path):
    path = tmp_path / "l" / "part-00000.parquet"
    with TokenWriter(path, layer=1, d_model=4, dtype="float16", metadata=META):
        pass
    write_tokens(tmp_path / "l" / "part-00001.parquet", {"s": "ACDE"})
    assert count_tokens([tmp_path / "l"]) == 4
    assert sum(len(b) for b in iter_tokens([tmp_path / "l"], 3, shuffle_buffer=2, seed=0)) == 4


def test_gather_concatenates_parts_and_merges_metadata(tmp_path):
    rng = np.random.default_rng(0)
    a_ids, a = pooled_part(tmp_path / "a.parquet", rng, 5, "f", 0)
    b_ids, b = pooled_part(tmp_path / "b.parquet", rng, 4, "f", 1)
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
    pooled_part(tmp_path / "a.parquet", rng, 3, "old", 0)
    pooled_part(tmp_path / "b.parquet", rng, 3, "new", 1)
    out = tmp_path / "all.parquet"
    with pytest.raises(
        DataError, match=r"b.parquet differs from .*a.parquet in embedder_fingerprint"
    ):
        gather_pooled_parts([tmp_path / "a.parquet", tmp_path / "b.parquet"], out)
    assert not out.exists() and not list(tmp_path.glob(".all*"))


@pytest.mark.parametrize("row_group_rows", [None, 100])
def test_many_small_batches_are_merged_while_pending_and_written_in_order(tmp_path, row_group_rows):
    """A pooled row group gathers thousands of few-sequence batches: they are merged as they
    wait (MERGE_PENDING), so a part's size does not grow the number of buffers held, and the
    file holds every row once, in the order written, whether row groups flush between."""
    rng = np.random.default_rng(3)
    n = 5 * MERGE_PENDING + 7
    ids, lengths, vectors = pooled_rows(rng, n, [0, 2], 8)
    path = tmp_path / "pooled.parquet"
    most_pending = 0
    with PooledWriter(
        path,
        layers=[0, 2],
        poolings=["last", "mean"],
        d_model=8,
        dtype="float32",
        metadata=META,
        row_group_rows=row_group_rows,
    ) as writer:
        for i in range(n):
            writer.write(
                ids[i : i + 1],
                "r1",
                lengths[i : i + 1],
                {k: v[i : i + 1] for k, v in vectors.items()},
            )
            most_pending = max(most_pending, len(writer._sink._pending))
    assert most_pending <= 2 * MERGE_PENDING
    if row_group_rows is None:  # one row group for all: without merging it would hold n tables
        assert most_pending < n // 2
    for layer in (0, 2):
        for pooling in ("last", "mean"):
            m = load_pooled([path], layer, pooling)
            assert list(m.seq_id) == ids
            np.testing.assert_array_equal(m.X, vectors[f"{pooling}_{layer:02d}"])
