"""Residual-stream activations on disk: the Parquet formats of design.md, atomic writers, streaming readers.

Two kinds of file, both zstd Parquet written with pyarrow:

- pooled: one row per sequence, `seq_id`, `model`, `length` (residues in the sequence),
  `embedded_length` (residues embedded; smaller only when truncated) and per stored layer
  `last_{l:02d}` / `mean_{l:02d}` as `fixed_size_list<float16|float32>[d_model]`;
- tokens: one row per residue of one layer, `seq_id`, `pos` (0-based residue index), `residue`
  (one letter), `act` (`fixed_size_list[d_model]`), files `layer_{l:02d}/part-{k:05d}.parquet`.

Every file carries key-value metadata (`read_metadata`): embedder name and fingerprint, layer
convention, dtype, d_model, prompt format and label, truncation. Writers write to a hidden
temporary sibling and rename on success, so a killed job leaves nothing under the final name.
Readers never hold more than a row group (plus the shuffle buffer) in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
POOLINGS = ("last", "mean")
LAYER_CONVENTION = (
    "layer l = residual stream after l transformer blocks (0 = token + position embeddings); "
    "layer L = output of the last block, taken BEFORE the final LayerNorm"
)
POOLING_CONVENTION = (
    "residue positions only (never the control tag, special tokens or position 0); "
    "last = last residue token (not <end>), mean = mean over residue tokens"
)
COMPRESSION = "zstd"
TOKEN_PART_GLOB = "part-*.parquet"
# Pooled rows are wide (layers x poolings x d_model); a row group of about this size keeps a
# one-column read (load_pooled) cheap without making files of thousands of tiny groups.
POOLED_ROW_GROUP_BYTES = 32 << 20
_COLUMN_RE = re.compile(r"^(last|mean)_(\d{2,})$")
_ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
_NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32}


# ----------------------------------------------------------------------------- names, schemas


def pooled_column(pooling: str, layer: int) -> str:
    """Column of a pooled table: pooled_column('last', 3) == 'last_03'."""
    if pooling not in POOLINGS:
        raise DataError(f"pooling '{pooling}' is unknown; accepted: {', '.join(POOLINGS)}")
    if layer < 0:
        raise DataError(f"layer {layer} is negative; layers are 0..L")
    return f"{pooling}_{layer:02d}"


def parse_pooled_column(name: str) -> tuple[str, int] | None:
    """('last', 3) for 'last_03'; None for any other column."""
    match = _COLUMN_RE.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def _value_type(dtype: str) -> pa.DataType:
    if dtype not in _ARROW_DTYPES:
        raise DataError(f"activation dtype '{dtype}' is unknown; accepted: float16, float32")
    return _ARROW_DTYPES[dtype]


def pooled_schema(
    layers: Sequence[int], poolings: Sequence[str], d_model: int, dtype: str
) -> pa.Schema:
    vector = pa.list_(_value_type(dtype), d_model)
    fields = [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("embedded_length", pa.int32(), nullable=False),
    ]
    for layer in layers:
        fields += [
            pa.field(pooled_column(p, layer), vector, nullable=False)
            for p in POOLINGS
            if p in poolings
        ]
    return pa.schema(fields)


def token_schema(d_model: int, dtype: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("seq_id", pa.string(), nullable=False),
            pa.field("pos", pa.int32(), nullable=False),
            pa.field("residue", pa.string(), nullable=False),
            pa.field("act", pa.list_(_value_type(dtype), d_model), nullable=False),
        ]
    )


def _encode_metadata(metadata: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Parquet key-value metadata: one key per field, JSON values (DuckDB shows them as text)."""
    return {str(k).encode(): json.dumps(v).encode() for k, v in metadata.items()}


def _decode_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        name = key.decode()
        if name.startswith("ARROW:") or name == "pandas":
            continue
        try:
            out[name] = json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError):
            out[name] = value.decode(errors="replace")
    return out


def _all_finite(values: np.ndarray) -> bool:
    if values.dtype == np.float16:
        # Exponent bits all set = inf or nan; numpy's float16 isfinite is ~5x slower than this.
        exponent = np.bitwise_and(values.view(np.uint16), 0x7C00)
        return values.size == 0 or int(exponent.max()) != 0x7C00
    return bool(np.isfinite(values).all())


def vectors_to_arrow(matrix: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """[n, d] float array -> fixed_size_list<dtype>[d] without per-row Python work."""
    with np.errstate(over="ignore"):  # reported below, with what to do about it
        values = np.ascontiguousarray(matrix, dtype=_NUMPY_DTYPES[dtype])
    if not _all_finite(values):
        # float16 overflows above 65504; a residual stream that large needs float32 storage.
        raise DataError(
            f"activations hold values that are not finite in {dtype} (max |x| = "
            f"{float(np.nanmax(np.abs(matrix.astype(np.float32)))):.4g}); "
            "set activations.dtype: float32"
        )
    n, d = values.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(n * d)), d)


def vectors_to_numpy(column: pa.Array | pa.ChunkedArray, *, dtype: Any = np.float32) -> np.ndarray:
    """fixed_size_list[d] column -> [n, d] numpy array (zero-copy up to the dtype conversion)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    d = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    matrix = flat.reshape(len(column), d)
    return matrix if dtype is None else matrix.astype(dtype, copy=False)


# ----------------------------------------------------------------------------- writers


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
        self.schema = schema.with_metadata(_encode_metadata(metadata))
        self.row_group_rows = max(1, int(row_group_rows))
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer = pq.ParquetWriter(
            tmp,
            self.schema,
            compression=COMPRESSION,
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
        if self._pending_rows >= self.row_group_rows:
            self._flush(final=False)

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

    def close(self, extra_metadata: Mapping[str, Any] | None = None) -> None:
        """Write what is pending, the footer, and rename the file to its final name."""
        if self._closed:
            return
        self._closed = True
        self._flush(final=True)
        self._writer.add_key_value_metadata(
            {k.decode(): v.decode() for k, v in _encode_metadata(extra_metadata or {}).items()}
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

    def __enter__(self) -> _SinkWriter:
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


def pooled_row_group_rows(n_columns: int, d_model: int, dtype: str) -> int:
    row_bytes = n_columns * d_model * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
    return max(16, POOLED_ROW_GROUP_BYTES // max(1, row_bytes))


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
            "format_version": FORMAT_VERSION,
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
    """Append one layer's per-residue activations; final name only on close()."""

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
            "format_version": FORMAT_VERSION,
            "layer_convention": LAYER_CONVENTION,
            "layer": self.layer,
            "d_model": self.d_model,
            "dtype": dtype,
        }
        schema = token_schema(self.d_model, dtype)
        self._sink = _ParquetSink(path, schema, meta, row_group_rows, ["seq_id", "residue"])

    def write(
        self, seq_ids: Sequence[str], residues: Sequence[str], activations: np.ndarray
    ) -> None:
        """Append the residues of whole sequences: `residues[i]` is the residue string of
        `seq_ids[i]` (as embedded) and `activations` their rows stacked [sum(len), d_model]."""
        lengths = np.fromiter((len(r) for r in residues), dtype=np.int64, count=len(residues))
        total = int(lengths.sum())
        if activations.shape != (total, self.d_model):
            raise ValueError(
                f"token activations have shape {activations.shape}, expected {(total, self.d_model)}"
            )
        # Dictionary-encoded ids expanded with a C `take`: no Python object per token.
        ids = pa.array(list(seq_ids), pa.string()).take(
            pa.array(np.repeat(np.arange(len(seq_ids), dtype=np.int32), lengths))
        )
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        pos = (np.arange(total, dtype=np.int64) - starts).astype(np.int32)
        letters = np.frombuffer("".join(residues).encode("ascii"), dtype="S1")
        table = pa.table(
            {
                "seq_id": ids,
                "pos": pa.array(pos),
                "residue": pa.array(letters.astype("U1")),
                "act": vectors_to_arrow(activations, self.dtype),
            }
        )
        self._sink.append(table)


# ----------------------------------------------------------------------------- metadata


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Key-value metadata of a pooled or token file (or of the first part of a layer directory):
    embedder, embedder_model, embedder_fingerprint, layer_convention, dtype, d_model, layers or
    layer, prompt_format, prompt_label, truncate, max_residues, n_truncated, ..."""
    path = Path(path)
    if path.is_dir():
        files = _part_files(path)
        if not files:
            raise DataError(f"token layer directory {path} holds no {TOKEN_PART_GLOB} files")
        path = files[0]
    return _decode_metadata(_parquet_file(path).metadata.metadata)


def _parquet_file(path: Path, **kwargs: Any) -> pq.ParquetFile:
    if not path.is_file():
        raise DataError(f"activation file {path} does not exist")
    try:
        return pq.ParquetFile(path, **kwargs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"activation file {path} is not a complete Parquet file ({exc}); rerun its extract job"
        ) from None


def pooled_layers(path: str | os.PathLike) -> list[int]:
    """Layers stored in a pooled file (those with any pooling column), ascending."""
    names = _parquet_file(Path(path)).schema_arrow.names
    return sorted({parsed[1] for n in names if (parsed := parse_pooled_column(n))})


# ----------------------------------------------------------------------------- gathering parts

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
    files = [_parquet_file(Path(p)) for p in parts]
    metas = [_decode_metadata(f.metadata.metadata) for f in files]
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


# ----------------------------------------------------------------------------- pooled reader


@dataclass(frozen=True)
class PooledMatrix:
    """One layer's pooled vectors of a set of sequences, and their labels (row-aligned)."""

    X: np.ndarray  # float32 [n, d_model]
    model: np.ndarray  # str [n]
    seq_id: np.ndarray  # str [n]
    length: np.ndarray  # int [n], residues in the sequence

    def __len__(self) -> int:
        return len(self.seq_id)


def load_pooled(paths: Sequence[str | os.PathLike], layer: int, pooling: str) -> PooledMatrix:
    """Rows of every file, in the order given; reads only the one vector column it needs."""
    column = pooled_column(pooling, layer)
    xs, models, ids, lengths = [], [], [], []
    d_model: int | None = None
    for raw in paths:
        path = Path(raw)
        pf = _parquet_file(path)
        if column not in pf.schema_arrow.names:
            have = pooled_layers(path)
            span = f"{have[0]}..{have[-1]}" if have else "none"
            raise DataError(
                f"pooled file {path} has no column '{column}' (layer {layer}, pooling {pooling}); "
                f"it stores layers {span} and poolings "
                f"{sorted({p for n in pf.schema_arrow.names if (p := parse_pooled_column(n))})}"
            )
        table = pf.read(columns=["seq_id", "model", "length", column])
        x = vectors_to_numpy(table.column(column))
        if d_model is not None and x.shape[1] != d_model:
            raise DataError(
                f"pooled file {path} has d_model {x.shape[1]}, the files before it {d_model}; "
                "files of one matrix must come from the same embedder"
            )
        d_model = x.shape[1]
        xs.append(x)
        models.append(table.column("model").to_numpy())
        ids.append(table.column("seq_id").to_numpy())
        lengths.append(table.column("length").to_numpy().astype(np.int64))
    if not xs:
        raise DataError("load_pooled needs at least one pooled file")
    return PooledMatrix(
        X=np.concatenate(xs).astype(np.float32, copy=False),
        model=np.concatenate(models).astype(str),
        seq_id=np.concatenate(ids).astype(str),
        length=np.concatenate(lengths),
    )


# ----------------------------------------------------------------------------- token readers


def _part_files(directory: Path) -> list[Path]:
    # Only finished parts: temporary siblings are hidden (".part-...tmp-PID") and never match.
    return sorted(p for p in directory.glob(TOKEN_PART_GLOB) if p.is_file())


def token_files(layer_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The finished part files of token layer directories, directory by directory, in order."""
    files: list[Path] = []
    for raw in layer_dirs:
        directory = Path(raw)
        if not directory.is_dir():
            raise DataError(f"token layer directory {directory} does not exist")
        files += _part_files(directory)
    if not files:
        shown = ", ".join(str(d) for d in layer_dirs) or "(none given)"
        raise DataError(f"no token part files ({TOKEN_PART_GLOB}) in {shown}")
    return files


def token_d_model(layer_dirs: Sequence[str | os.PathLike]) -> int:
    """d_model of token files, checked to agree across every file."""
    sizes = {
        f: _parquet_file(f).schema_arrow.field("act").type.list_size
        for f in token_files(layer_dirs)
    }
    distinct = sorted(set(sizes.values()))
    if len(distinct) != 1:
        raise DataError(
            f"token files disagree on d_model ({distinct}): e.g. {next(iter(sizes))}; "
            "one SAE trains on one embedder's activations"
        )
    return distinct[0]


def _seq_id_set(seq_ids: Collection[str] | None) -> pa.Array | None:
    return None if seq_ids is None else pa.array(sorted(set(seq_ids)), pa.string())


def _keep_mask(column: pa.ChunkedArray | pa.Array, keep: pa.Array) -> np.ndarray:
    """Boolean mask of rows whose seq_id is in `keep`, computed on the dictionary when there is one."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        in_dict = pc.is_in(column.dictionary, value_set=keep).to_numpy(zero_copy_only=False)
        return in_dict[column.indices.to_numpy(zero_copy_only=False)]
    return pc.is_in(column, value_set=keep).to_numpy(zero_copy_only=False)


def count_tokens(
    layer_dirs: Sequence[str | os.PathLike], seq_ids: Collection[str] | None = None
) -> int:
    """Token rows in the layer directories (restricted to seq_ids when given)."""
    files = token_files(layer_dirs)
    keep = _seq_id_set(seq_ids)
    if keep is None:
        return sum(_parquet_file(f).metadata.num_rows for f in files)
    total = 0
    for f in files:
        pf = _parquet_file(f, read_dictionary=["seq_id"])
        for batch in pf.iter_batches(batch_size=1 << 20, columns=["seq_id"]):
            total += int(_keep_mask(batch.column(0), keep).sum())
    return total


def token_seq_ids(layer_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Unique seq_ids of the token files, sorted."""
    seen: set[str] = set()
    for f in token_files(layer_dirs):
        pf = _parquet_file(f)
        for batch in pf.iter_batches(batch_size=1 << 20, columns=["seq_id"]):
            seen.update(pc.unique(batch.column(0)).to_pylist())
    return sorted(seen)


@dataclass
class TokenBatch:
    """Token rows in file order, with their labels."""

    seq_id: np.ndarray  # str [n]
    pos: np.ndarray  # int [n], residue index 0-based within the sequence
    residue: np.ndarray  # str [n], one letter
    act: np.ndarray  # float32 [n, d_model]

    def __len__(self) -> int:
        return len(self.seq_id)


def iter_token_batches(
    layer_dirs: Sequence[str | os.PathLike],
    *,
    batch_rows: int,
    seq_ids: Collection[str] | None = None,
) -> Iterator[TokenBatch]:
    """Token rows in file order (no shuffling), `batch_rows` at a time (the last batch may be
    shorter), restricted to `seq_ids` when given. Memory: a Parquet batch plus one output batch."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    keep = _seq_id_set(seq_ids)
    columns = ["seq_id", "pos", "residue", "act"]
    pending: list[pa.Table] = []
    n_pending = 0
    for f in token_files(layer_dirs):
        pf = _parquet_file(f)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            table = pa.Table.from_batches([batch])
            if keep is not None:
                table = table.filter(pa.array(_keep_mask(table.column("seq_id"), keep)))
            if table.num_rows == 0:
                continue
            pending.append(table)
            n_pending += table.num_rows
            while n_pending >= batch_rows:
                whole = pa.concat_tables(pending)
                yield _token_batch(whole.slice(0, batch_rows))
                rest = whole.slice(batch_rows)
                pending, n_pending = ([rest] if rest.num_rows else []), rest.num_rows
    if n_pending:
        yield _token_batch(pa.concat_tables(pending))


def _token_batch(table: pa.Table) -> TokenBatch:
    return TokenBatch(
        seq_id=table.column("seq_id").to_numpy().astype(str),
        pos=table.column("pos").to_numpy().astype(np.int64),
        residue=table.column("residue").to_numpy().astype(str),
        act=vectors_to_numpy(table.column("act")),
    )


def _row_groups(files: Sequence[Path]) -> list[tuple[Path, int]]:
    units = []
    for f in files:
        meta = _parquet_file(f).metadata
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
            handles[path] = _parquet_file(path, read_dictionary=["seq_id"])
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
            acts = acts[torch.from_numpy(_keep_mask(table.column("seq_id"), self.keep))]
        return acts


def _prefetched(units: Iterator[Any], read: Callable[[Any], Any], threads: int) -> Iterator[Any]:
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
    import torch

    if batch_size < 1 or shuffle_buffer < 0:
        raise ValueError("batch_size must be >= 1 and shuffle_buffer >= 0")
    files = token_files(layer_dirs)
    d_model = token_d_model(layer_dirs)
    units = _row_groups(files)
    keep = _seq_id_set(seq_ids)
    empty = DataError(
        f"iter_tokens(loop=True) has no rows to loop over in {', '.join(map(str, layer_dirs))}"
        + (" for the given seq_ids" if keep is not None else "")
    )
    order_rng = np.random.default_rng([seed, 0])
    slot_gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 1]).integers(2**62)))

    def unit_order() -> Iterator[tuple[Path, int] | None]:
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
    chunks = _prefetched(unit_order(), _RowGroupReader(keep), threads)
    try:
        stream = _RowStream(rows_or_fail(chunks))
        buffer = torch.empty((capacity, d_model), dtype=torch.float32)
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
