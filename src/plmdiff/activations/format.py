"""The on-disk format of residual-stream activations: schemas, column names, metadata, vectors.

Two kinds of file, both zstd Parquet written with pyarrow (plmdiff.activations.writers):

- pooled: one row per sequence, `seq_id`, `model`, `length` (residues in the sequence),
  `embedded_length` (residues embedded; smaller only when truncated) and per stored layer
  `last_{l:02d}` / `mean_{l:02d}` as `fixed_size_list<float16|float32>[d_model]`;
- tokens: one row per residue-bearing model token of one layer, `seq_id`, `pos` (0-based index of
  the token's first residue), `pos_end` (one past its last residue), `residue` (the token's
  residues, `pos_end - pos` letters), `act` (`fixed_size_list[d_model]`), files
  `layer_{l:02d}/part-{k:05d}.parquet`. A sequence's rows are contiguous and their spans tile
  its residues in order; with one token per residue (ZymCTRL) `pos_end == pos + 1` and
  `residue` is one letter. Files of format 1 have no `pos_end` (readers take `pos + 1`).

Every file carries key-value metadata (plmdiff.activations.readers.read_metadata): embedder name
and fingerprint, the layer and pooling conventions below, dtype, d_model, prompt format and
label, truncation, and the format version (POOLED_FORMAT_VERSION, TOKEN_FORMAT_VERSION).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from plmdiff.core.errors import DataError

# The pooled format has not changed since version 1; the token format gained `pos_end`.
POOLED_FORMAT_VERSION = 1
TOKEN_FORMAT_VERSION = 2
POOLINGS = ("last", "mean")
LAYER_CONVENTION = (
    "layer l = residual stream after l transformer blocks (0 = token + position embeddings); "
    "layer L = output of the last block, taken BEFORE the final LayerNorm"
)
POOLING_CONVENTION = (
    "residue positions only (never the control tag, special tokens or position 0); "
    "last = last residue-bearing token (not <end>), mean = mean over residues, each residue "
    "contributing the vector of the token that holds it"
)
TOKEN_PART_GLOB = "part-*.parquet"
# Pooled rows are wide (layers x poolings x d_model); a row group of about this size keeps a
# one-column read (load_pooled) cheap without making files of thousands of tiny groups.
POOLED_ROW_GROUP_BYTES = 32 << 20
_COLUMN_RE = re.compile(r"^(last|mean)_(\d{2,})$")
_ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
_NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32}


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
    """The columns of a pooled file: labels, then per layer its poolings in POOLINGS order."""
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
    """The columns of a token part file (one row per residue-bearing token of one layer)."""
    return pa.schema(
        [
            pa.field("seq_id", pa.string(), nullable=False),
            pa.field("pos", pa.int32(), nullable=False),
            pa.field("pos_end", pa.int32(), nullable=False),
            pa.field("residue", pa.string(), nullable=False),
            pa.field("act", pa.list_(_value_type(dtype), d_model), nullable=False),
        ]
    )


def encode_metadata(metadata: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Parquet key-value metadata: one key per field, JSON values (DuckDB shows them as text)."""
    return {str(k).encode(): json.dumps(v).encode() for k, v in metadata.items()}


def decode_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """The inverse of encode_metadata; pyarrow's and pandas' own keys are left out."""
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
    """No inf or nan in `values`."""
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


def pooled_row_group_rows(n_columns: int, d_model: int, dtype: str) -> int:
    """Rows per row group of a pooled file: about POOLED_ROW_GROUP_BYTES, at least 16."""
    row_bytes = n_columns * d_model * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
    return max(16, POOLED_ROW_GROUP_BYTES // max(1, row_bytes))
