"""The SAE training loader: shuffled batches of token activations streamed from Parquet.

Row groups of the token parts (plmdiff.activations.format) are decoded by a few threads ahead of
use and passed through a shuffle buffer, so memory is bounded by the buffer whatever the size of
the study (bench/sae_data.py measures it against an in-memory tensor).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plmdiff.activations.readers import (
    keep_mask,
    open_parquet,
    seq_id_set,
    token_d_model,
    token_files,
)
from plmdiff.core.errors import DataError


def count_tokens(
    layer_dirs: Sequence[str | os.PathLike], seq_ids: Collection[str] | None = None
) -> int:
    """Token rows in the layer directories (restricted to seq_ids when given)."""
    files = token_files(layer_dirs)
    keep = seq_id_set(seq_ids)
    if keep is None:
        return sum(open_parquet(f).metadata.num_rows for f in files)
    total = 0
    for f in files:
        pf = open_parquet(f, read_dictionary=["seq_id"])
        for batch in pf.iter_batches(batch_size=1 << 20, columns=["seq_id"]):
            total += int(keep_mask(batch.column(0), keep).sum())
    return total


def _row_groups(files: Sequence[Path]) -> list[tuple[Path, int]]:
    units = []
    for f in files:
        meta = open_parquet(f).metadata
        units += [(f, i) for i in range(meta.num_row_groups) if meta.row_group(i).num_rows]
    return units


class _RowGroupReader:
    """Reads one row group's activations as a torch tensor of the stored dtype ([n, d]).

    DLPack hands Arrow's buffer to torch without a copy; torch then converts float16 to
    float32 several times faster than numpy does.
    """

    def __init__(self, keep: pa.Array | None) -> None:
        self.keep = keep
        self.columns = ["act"] if keep is None else ["seq_id", "act"]
        self._local = threading.local()  # ParquetFile readers are not shared across threads

    def _file(self, path: Path) -> pq.ParquetFile:
        handles = self._local.__dict__.setdefault("handles", {})
        if path not in handles:
            handles[path] = open_parquet(path, read_dictionary=["seq_id"])
        return handles[path]

    def __call__(self, unit: tuple[Path, int] | None) -> Any:
        import torch

        if unit is None:  # an epoch mark passes through
            return None
        path, group = unit
        table = self._file(path).read_row_group(group, columns=self.columns, use_threads=False)
        column = table.column("act")
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        acts = torch.from_dlpack(column.flatten()).reshape(len(column), column.type.list_size)
        if self.keep is not None:
            acts = acts[torch.from_numpy(keep_mask(table.column("seq_id"), self.keep))]
        return acts


def _prefetched(
    units: Iterator[Any], read: Callable[[Any], Any], threads: int
) -> Generator[Any, None, None]:
    """read(unit) for each unit, in order, computed by `threads` threads a few units ahead
    (Parquet decoding and torch conversions release the GIL)."""
    if threads <= 1:
        for unit in units:
            yield read(unit)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="plmdiff-read")
    pending: deque[Future[Any]] = deque()
    try:
        for unit in units:
            pending.append(pool.submit(read, unit))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_read_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def iter_tokens(
    layer_dirs: Sequence[str | os.PathLike],
    batch_size: int,
    *,
    shuffle_buffer: int,
    seed: int,
    seq_ids: Collection[str] | None = None,
    loop: bool = False,
    read_threads: int | None = None,
) -> Iterator[Any]:
    """Shuffled batches of token activations as float32 CPU tensors [batch_size, d_model].

    Each epoch visits the row groups of every file in a fresh random order and passes their
    rows through a buffer of `shuffle_buffer` rows: every batch is `batch_size` rows drawn from
    the buffer without replacement (one random permutation of the buffer's slots per cycle), and
    the drawn slots are refilled with the next rows read. Memory: the buffer (shuffle_buffer x
    d_model x 4 bytes) plus a few row groups being decoded (`read_threads` + 1), whatever the
    size of the study. Rows are copied twice (into the buffer, out into the batch), by torch.

    loop=False: one epoch, every (selected) row exactly once; the last batch may be shorter.
    loop=True: epochs repeat forever, each reshuffled; every batch is full.
    seq_ids: only rows of these sequences (e.g. an SAE's training fold).
    read_threads: row groups decoded in parallel (default: up to 4, leaving a core free).
    """
    if batch_size < 1 or shuffle_buffer < 0:
        raise ValueError("batch_size must be >= 1 and shuffle_buffer >= 0")
    keep = seq_id_set(seq_ids)
    empty = DataError(
        f"iter_tokens(loop=True) has no rows to loop over in {', '.join(map(str, layer_dirs))}"
        + (" for the given seq_ids" if keep is not None else "")
    )
    yield from shuffled_batches(
        _row_groups(token_files(layer_dirs)),
        _RowGroupReader(keep),
        token_d_model(layer_dirs),
        batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        loop=loop,
        read_threads=read_threads,
        empty=empty,
    )


def shuffled_batches(
    units: Sequence[Any],
    read: Callable[[Any], Any],
    width: int,
    batch_size: int,
    *,
    shuffle_buffer: int,
    seed: int,
    loop: bool,
    read_threads: int | None,
    empty: Exception,
) -> Iterator[Any]:
    """The shuffle buffer of iter_tokens over any row source: `read(unit)` gives an [n, width]
    tensor (or None for an epoch mark) for each unit (e.g. a row group), visited in a fresh
    random order each epoch; `empty` is raised when a looping epoch yields no row.
    plmdiff.model_diff.paired feeds it row groups of several models side by side."""
    import torch

    if batch_size < 1 or shuffle_buffer < 0:
        raise ValueError("batch_size must be >= 1 and shuffle_buffer >= 0")
    order_rng = np.random.default_rng([seed, 0])
    slot_gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 1]).integers(2**62)))

    def unit_order() -> Iterator[Any]:
        while True:
            for i in order_rng.permutation(len(units)):
                yield units[i]
            if not loop:
                return
            yield None  # end of an epoch

    def rows_or_fail(chunks: Iterator[Any]) -> Iterator[Any]:
        """Drops the epoch marks; an epoch without a single row would loop forever: fail."""
        rows = 0
        for chunk in chunks:
            if chunk is None:
                if rows == 0:
                    raise empty
                rows = 0
                continue
            rows += len(chunk)
            yield chunk

    capacity = max(int(shuffle_buffer), int(batch_size))
    threads = default_read_threads() if read_threads is None else max(1, int(read_threads))
    chunks = _prefetched(unit_order(), read, threads)
    try:
        stream = _RowStream(rows_or_fail(chunks))
        buffer = torch.empty((capacity, width), dtype=torch.float32)
        filled = stream.fill(buffer, torch.arange(capacity))
        valid = torch.zeros(capacity, dtype=torch.bool)
        valid[:filled] = True
        if filled == capacity:
            exhausted = False
            while not exhausted:
                perm = torch.randperm(capacity, generator=slot_gen)
                for start in range(0, capacity - batch_size + 1, batch_size):
                    slots = perm[start : start + batch_size]
                    batch = buffer.index_select(0, slots)
                    got = stream.fill(buffer, slots)
                    if got < len(slots):
                        valid[slots[got:]] = False
                        exhausted = True
                    yield batch
                    if exhausted:
                        break
        # End of the data: what is left in the buffer, in random order.
        rest = torch.nonzero(valid).flatten()
        rest = rest[torch.randperm(len(rest), generator=slot_gen)]
        for start in range(0, len(rest), batch_size):
            yield buffer.index_select(0, rest[start : start + batch_size])
    finally:
        chunks.close()


class _RowStream:
    """Rows from a stream of [n, d] tensors, copied into given buffer slots on demand."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._chunks = chunks
        self._current: Any = None
        self._offset = 0

    def fill(self, buffer: Any, slots: Any) -> int:
        """Copy the next rows into buffer[slots] (converting to the buffer's dtype); returns
        how many slots were filled (fewer than len(slots) only when the stream ended)."""
        done = 0
        while done < len(slots):
            if self._current is None or self._offset >= len(self._current):
                self._current = next(self._chunks, None)
                self._offset = 0
                if self._current is None:
                    return done
                continue
            take = min(len(slots) - done, len(self._current) - self._offset)
            target = slots[done : done + take]
            source = self._current[self._offset : self._offset + take]
            first = int(target[0])
            if int(target[-1]) - first == take - 1 and bool((target.diff() == 1).all()):
                buffer[first : first + take].copy_(source)
            else:
                buffer.index_copy_(0, target, source.to(buffer.dtype))
            self._offset += take
            done += take
        return done
