"""plmdiff.activations.loader: the shuffled SAE token stream, epochs, memory bound."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from plmdiff.activations.loader import count_tokens, iter_tokens
from plmdiff.activations.writers import TokenWriter
from plmdiff.core.errors import DataError
from tests.unit.activations.files import (
    META,
    two_dirs,
    write_tokens,
)


def test_iter_tokens_one_epoch_covers_every_row_once_shuffled(tmp_path):
    dirs, _, _, total = two_dirs(tmp_path, np.random.default_rng(3))
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
    dirs, a, b, _ = two_dirs(tmp_path, np.random.default_rng(4))
    keep = {"a0003", "b0007", "b0029"}
    want = count_tokens(dirs, keep)
    for buffer in (8, 10_000):
        got = np.concatenate(
            [x.numpy() for x in iter_tokens(dirs, 5, shuffle_buffer=buffer, seed=0, seq_ids=keep)]
        )
        assert len(got) == want == len(a["a0003"]) + len(b["b0007"]) + len(b["b0029"])
        assert len(np.unique(got[:, 0])) == want


def test_iter_tokens_loop_repeats_epochs_with_full_batches(tmp_path):
    dirs, _, _, total = two_dirs(tmp_path, np.random.default_rng(5))
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
