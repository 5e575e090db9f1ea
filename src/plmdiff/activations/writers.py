"""Writing activation files atomically: pooled parts, token parts, and gathering pooled parts.

Writers write to a hidden temporary sibling and rename on success (plmdiff.core.runtime.atomic_path),
so a killed job leaves nothing under the final name. The schemas and metadata conventions are
plmdiff.activations.format's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plmdiff.activations.format import (
    LAYER_CONVENTION,
    POOLED_FORMAT_VERSION,
    POOLING_CONVENTION,
    POOLINGS,
    TOKEN_FORMAT_VERSION,
    decode_metadata,
    encode_metadata,
    pooled_column,
    pooled_row_group_rows,
    pooled_schema,
    token_schema,
    vectors_to_arrow,
)
from plmdiff.activations.readers import open_parquet
from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path
from plmdiff.core.tables import PARQUET_COMPRESSION

# Pending batches merged into one table every this many appends. A pooled row group holds
# thousands of batches of a few sequences each; kept apart, their small buffers fragment the
# heap between the batches' large temporaries and the peak RSS grows with the part's size
# (demo model, 10,000 sequences: +150 MB; merged: +33 MB, the data itself). Each row is
# copied once more, which costs nothing next to the forward pass.
MERGE_PENDING = 64


class _ParquetSink:
    """One Parquet file written through a temporary sibling, in row groups of a fixed size."""

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        metadata: Mapping[str, Any],
        row_group_rows: int,
        dictionary_columns: Sequence[str],
    ) -> None:
        self.path = Path(path)
        self.schema = schema.with_metadata(encode_metadata(metadata))
        self.row_group_rows = max(1, int(row_group_rows))
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._unmerged = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer = pq.ParquetWriter(
            tmp,
            self.schema,
            compression=PARQUET_COMPRESSION,
            use_dictionary=list(dictionary_columns),
            # Statistics on the wide vector columns cost time and are useless for filtering.
            write_statistics=list(dictionary_columns),
        )
        self._closed = False

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.schema.remove_metadata(), safe=False))
        self._pending_rows += table.num_rows
        self._unmerged += 1
        if self._pending_rows >= self.row_group_rows:
            self._flush(final=False)
        elif self._unmerged >= MERGE_PENDING:
            recent = self._pending[-self._unmerged :]
            del self._pending[-self._unmerged :]
            self._pending.append(pa.concat_tables(recent).combine_chunks())
            self._unmerged = 0

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        full = (table.num_rows // self.row_group_rows) * self.row_group_rows
        cut = table.num_rows if final else full
        if cut:
            self._writer.write_table(table.slice(0, cut), row_group_size=self.row_group_rows)
            self.rows += cut
        rest = table.slice(cut)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._unmerged = len(self._pending)

    def close(self, extra_metadata: Mapping[str, Any] | None = None) -> None:
        """Write what is pending, the footer, and rename the file to its final name."""
        if self._closed:
            return
        self._closed = True
        self._flush(final=True)
        self._writer.add_key_value_metadata(
            {k.decode(): v.decode() for k, v in encode_metadata(extra_metadata or {}).items()}
        )
        self._writer.close()
        self._stack.close()

    def abort(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Drop the temporary file; nothing appears under the final name."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
        error = exc if exc is not None else RuntimeError(f"write of {self.path} aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(error), error, tb)


class _SinkWriter:
    """Context-manager protocol shared by the writers: close on success, abort on error."""

    _sink: _ParquetSink

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    @property
    def path(self) -> Path:
        return self._sink.path

    @property
    def rows(self) -> int:
        return self._sink.rows

    def close(self, extra_metadata: Mapping[str, Any] | None = None) -> None:
        self._sink.close(extra_metadata)

    def abort(self, *exc_info: Any) -> None:
        self._sink.abort(*exc_info)


class PooledWriter(_SinkWriter):
    """Append pooled rows batch by batch; the file gets its final name only on close().

    `metadata` is stored as file key-value metadata (see `read_metadata`); it should hold at
    least embedder, embedder_fingerprint, d_model and dtype. The layer and pooling conventions
    and the format version are added here.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        layers: Sequence[int],
        poolings: Sequence[str],
        d_model: int,
        dtype: str,
        metadata: Mapping[str, Any],
        row_group_rows: int | None = None,
    ) -> None:
        self.layers = [int(layer) for layer in layers]
        self.poolings = [p for p in POOLINGS if p in poolings]
        self.d_model = int(d_model)
        self.dtype = dtype
        self.columns = [pooled_column(p, layer) for layer in self.layers for p in self.poolings]
        schema = pooled_schema(self.layers, self.poolings, self.d_model, dtype)
        meta = {
            **metadata,
            "plmdiff_format": "pooled",
            "format_version": POOLED_FORMAT_VERSION,
            "layer_convention": LAYER_CONVENTION,
            "pooling_convention": POOLING_CONVENTION,
            "layers": self.layers,
            "poolings": self.poolings,
            "d_model": self.d_model,
            "dtype": dtype,
        }
        rows = row_group_rows or pooled_row_group_rows(len(self.columns), self.d_model, dtype)
        self._sink = _ParquetSink(path, schema, meta, rows, ["seq_id", "model"])

    def write(
        self,
        seq_ids: Sequence[str],
        models: Sequence[str] | str,
        lengths: Sequence[int] | np.ndarray,
        vectors: Mapping[str, np.ndarray],
        embedded_lengths: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Append rows; `vectors` maps every column name (pooled_column) to an [n, d_model] array."""
        n = len(seq_ids)
        if isinstance(models, str):
            models = [models] * n
        missing = [c for c in self.columns if c not in vectors]
        if missing:
            raise ValueError(f"pooled rows lack columns {missing[:4]}")
        arrays: dict[str, pa.Array] = {
            "seq_id": pa.array(list(seq_ids), pa.string()),
            "model": pa.array(list(models), pa.string()),
            "length": pa.array(np.asarray(lengths, dtype=np.int32)),
            "embedded_length": pa.array(
                np.asarray(lengths if embedded_lengths is None else embedded_lengths, np.int32)
            ),
        }
        for column in self.columns:
            matrix = vectors[column]
            if matrix.shape != (n, self.d_model):
                raise ValueError(
                    f"column {column}: shape {matrix.shape}, expected {(n, self.d_model)}"
                )
            arrays[column] = vectors_to_arrow(matrix, self.dtype)
        self._sink.append(pa.table(arrays))


class TokenWriter(_SinkWriter):
    """Append one layer's per-token activations; final name only on close()."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        layer: int,
        d_model: int,
        dtype: str,
        metadata: Mapping[str, Any],
        row_group_rows: int = 16384,
    ) -> None:
        self.layer = int(layer)
        self.d_model = int(d_model)
        self.dtype = dtype
        meta = {
            **metadata,
            "plmdiff_format": "tokens",
            "format_version": TOKEN_FORMAT_VERSION,
            "layer_convention": LAYER_CONVENTION,
            "layer": self.layer,
            "d_model": self.d_model,
            "dtype": dtype,
        }
        schema = token_schema(self.d_model, dtype)
        self._sink = _ParquetSink(path, schema, meta, row_group_rows, ["seq_id", "residue"])

    def write(
        self,
        seq_ids: Sequence[str],
        residues: Sequence[str],
        activations: np.ndarray,
        spans: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Append the tokens of whole sequences: `residues[i]` is the residue string of
        `seq_ids[i]` (as embedded), `spans[i]` the [pos, pos_end) residue span of each of its
        residue-bearing tokens (int [n_i, 2], tiling the string in order; None: one token per
        residue) and `activations` their rows stacked [sum(n_i), d_model]."""
        if spans is None:
            self._append(seq_ids, *_one_per_residue(residues), activations)
        else:
            self._append(seq_ids, *_token_columns(residues, spans), activations)

    def _append(
        self,
        seq_ids: Sequence[str],
        counts: np.ndarray,
        pos: np.ndarray,
        pos_end: np.ndarray,
        residue: pa.Array,
        activations: np.ndarray,
    ) -> None:
        total = int(counts.sum())
        if activations.shape != (total, self.d_model):
            raise ValueError(
                f"token activations have shape {activations.shape}, expected {(total, self.d_model)}"
            )
        # Dictionary-encoded ids expanded with a C `take`: no Python object per token.
        ids = pa.array(list(seq_ids), pa.string()).take(
            pa.array(np.repeat(np.arange(len(seq_ids), dtype=np.int32), counts))
        )
        table = pa.table(
            {
                "seq_id": ids,
                "pos": pa.array(pos.astype(np.int32)),
                "pos_end": pa.array(pos_end.astype(np.int32)),
                "residue": residue,
                "act": vectors_to_arrow(activations, self.dtype),
            }
        )
        self._sink.append(table)


def _one_per_residue(
    residues: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Token columns when every residue is a token, without a Python object per residue."""
    counts = np.fromiter((len(r) for r in residues), dtype=np.int64, count=len(residues))
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.arange(total, dtype=np.int64) - starts
    letters = np.frombuffer("".join(residues).encode("ascii"), dtype="S1")
    return counts, pos, pos + 1, pa.array(letters.astype("U1"))


def _token_columns(
    residues: Sequence[str], spans: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Token columns from each sequence's residue spans."""
    if len(spans) != len(residues):
        raise ValueError(f"{len(spans)} span arrays for {len(residues)} sequences")
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1, 2) for s in spans]
    for text, span in zip(residues, arrays, strict=True):
        tiled = len(span) > 0 and span[0, 0] == 0 and span[-1, 1] == len(text)
        if not (tiled and (span[1:, 0] == span[:-1, 1]).all() and (span[:, 1] > span[:, 0]).all()):
            raise ValueError(f"token spans do not tile a {len(text)}-residue sequence in order")
    counts = np.asarray([len(a) for a in arrays], dtype=np.int64)
    if counts.sum() and bool(all((a[:, 1] - a[:, 0] == 1).all() for a in arrays)):
        return _one_per_residue(residues)
    joined = np.concatenate(arrays) if arrays else np.zeros((0, 2), dtype=np.int64)
    words = [
        text[a:b] for text, span in zip(residues, arrays, strict=True) for a, b in span.tolist()
    ]
    return counts, joined[:, 0], joined[:, 1], pa.array(words, pa.string())


# Metadata that must agree across the parts of one pooled table.
_SHARED_KEYS = (
    "plmdiff_format",
    "embedder",
    "embedder_fingerprint",
    "model",
    "layers",
    "poolings",
    "d_model",
    "dtype",
    "prompt_format",
    "prompt_label",
    "truncate",
)
_PART_KEYS = ("part", "n_parts")
_COUNT_KEYS = ("n_sequences", "n_tokens", "n_truncated")


def gather_pooled_parts(
    parts: Sequence[str | os.PathLike], out: str | os.PathLike, max_listed: int = 100
) -> int:
    """Concatenate pooled part files into one pooled table (atomically), row group by row
    group; returns the number of rows. Parts must come from the same embedder and settings."""
    if not parts:
        raise DataError(f"no pooled parts to gather into {out}")
    files = [open_parquet(Path(p)) for p in parts]
    metas = [decode_metadata(f.metadata.metadata) for f in files]
    schema = files[0].schema_arrow.remove_metadata()
    for path, pf, meta in zip(parts, files, metas, strict=True):
        if meta.get("plmdiff_format") != "pooled":
            raise DataError(f"{path} is not a pooled activation file (plmdiff_format metadata)")
        differ = [k for k in _SHARED_KEYS if meta.get(k) != metas[0].get(k)]
        if differ or not pf.schema_arrow.remove_metadata().equals(schema):
            what = differ[0] if differ else "column schema"
            raise DataError(
                f"pooled part {path} differs from {parts[0]} in {what} "
                f"({meta.get(what, '-')!r} vs {metas[0].get(what, '-')!r}); "
                "rerun its extract job so that all parts come from one checkpoint and config"
            )
    merged = {k: v for k, v in metas[0].items() if k not in _PART_KEYS + _COUNT_KEYS}
    merged["n_parts"] = len(parts)
    footer: dict[str, Any] = {k: sum(int(m.get(k, 0)) for m in metas) for k in _COUNT_KEYS}
    footer["truncated_seq_ids"] = [i for m in metas for i in m.get("truncated_seq_ids", [])][
        :max_listed
    ]
    rows_per_group = max(
        (f.metadata.row_group(0).num_rows for f in files if f.metadata.num_row_groups),
        default=1,
    )
    sink = _ParquetSink(out, schema, merged, rows_per_group, ["seq_id", "model"])
    try:
        for pf in files:
            for group in range(pf.metadata.num_row_groups):
                sink.append(pf.read_row_group(group))
        sink.close(footer)
    except BaseException as exc:
        sink.abort(type(exc), exc, exc.__traceback__)
        raise
    return sink.rows
