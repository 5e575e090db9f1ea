"""Reading activation files: metadata, one layer's pooled matrix, token rows in file order.

Readers never hold more than a row group (plus one output batch) in memory. Only finished files
are read: a writer's temporary sibling is hidden and never matches TOKEN_PART_GLOB
(plmdiff.activations.writers). The shuffled stream that trains SAEs is plmdiff.activations.loader.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plmdiff.activations.format import (
    TOKEN_PART_GLOB,
    decode_metadata,
    parse_pooled_column,
    pooled_column,
    vectors_to_numpy,
)
from plmdiff.core.errors import DataError


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Key-value metadata of a pooled or token file (or of the first part of a layer directory):
    embedder, embedder_model, embedder_fingerprint, layer_convention, dtype, d_model, layers or
    layer, prompt_format, prompt_label, truncate, max_residues, n_truncated, ..."""
    path = Path(path)
    if path.is_dir():
        files = part_files(path)
        if not files:
            raise DataError(f"token layer directory {path} holds no {TOKEN_PART_GLOB} files")
        path = files[0]
    return decode_metadata(open_parquet(path).metadata.metadata)


def open_parquet(path: Path, **kwargs: Any) -> pq.ParquetFile:
    """A finished activation file, or a DataError that names it and says what to rerun."""
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
    names = open_parquet(Path(path)).schema_arrow.names
    return sorted({parsed[1] for n in names if (parsed := parse_pooled_column(n))})


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
        pf = open_parquet(path)
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


def part_files(directory: Path) -> list[Path]:
    """The finished token part files of one layer directory, sorted."""
    # Only finished parts: temporary siblings are hidden (".part-...tmp-PID") and never match.
    return sorted(p for p in directory.glob(TOKEN_PART_GLOB) if p.is_file())


def token_files(layer_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The finished part files of token layer directories, directory by directory, in order."""
    files: list[Path] = []
    for raw in layer_dirs:
        directory = Path(raw)
        if not directory.is_dir():
            raise DataError(f"token layer directory {directory} does not exist")
        files += part_files(directory)
    if not files:
        shown = ", ".join(str(d) for d in layer_dirs) or "(none given)"
        raise DataError(f"no token part files ({TOKEN_PART_GLOB}) in {shown}")
    return files


def token_d_model(layer_dirs: Sequence[str | os.PathLike]) -> int:
    """d_model of token files, checked to agree across every file."""
    sizes = {
        f: open_parquet(f).schema_arrow.field("act").type.list_size for f in token_files(layer_dirs)
    }
    distinct = sorted(set(sizes.values()))
    if len(distinct) != 1:
        raise DataError(
            f"token files disagree on d_model ({distinct}): e.g. {next(iter(sizes))}; "
            "one SAE trains on one embedder's activations"
        )
    return distinct[0]


def seq_id_set(seq_ids: Collection[str] | None) -> pa.Array | None:
    """seq_ids as a sorted Arrow set for `keep_mask`; None (keep every row) stays None."""
    return None if seq_ids is None else pa.array(sorted(set(seq_ids)), pa.string())


def keep_mask(column: pa.ChunkedArray | pa.Array, keep: pa.Array) -> np.ndarray:
    """Boolean mask of rows whose seq_id is in `keep`, computed on the dictionary when there is one."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        in_dict = pc.is_in(column.dictionary, value_set=keep).to_numpy(zero_copy_only=False)
        return in_dict[column.indices.to_numpy(zero_copy_only=False)]
    return pc.is_in(column, value_set=keep).to_numpy(zero_copy_only=False)


def token_seq_ids(layer_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Unique seq_ids of the token files, sorted."""
    seen: set[str] = set()
    for f in token_files(layer_dirs):
        pf = open_parquet(f)
        for batch in pf.iter_batches(batch_size=1 << 20, columns=["seq_id"]):
            seen.update(pc.unique(batch.column(0)).to_pylist())
    return sorted(seen)


@dataclass
class TokenBatch:
    """Token rows in file order, with their labels (plmdiff.activations.format)."""

    seq_id: np.ndarray  # str [n]
    pos: np.ndarray  # int [n], index of the token's first residue, 0-based within the sequence
    residue: np.ndarray  # str [n], the token's residues (one letter per residue)
    act: np.ndarray  # float32 [n, d_model]
    pos_end: np.ndarray  # int [n], one past the token's last residue

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
    keep = seq_id_set(seq_ids)
    pending: list[pa.Table] = []
    n_pending = 0
    for f in token_files(layer_dirs):
        pf = open_parquet(f)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=token_columns(pf)):
            table = with_pos_end(pa.Table.from_batches([batch]))
            if keep is not None:
                table = table.filter(pa.array(keep_mask(table.column("seq_id"), keep)))
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


def token_columns(pf: pq.ParquetFile) -> list[str]:
    """The label and activation columns of a token file (format 1 files lack `pos_end`)."""
    names = pf.schema_arrow.names
    return [c for c in ("seq_id", "pos", "pos_end", "residue", "act") if c in names]


def with_pos_end(table: pa.Table) -> pa.Table:
    """A token table with `pos_end`: a format 1 file holds one token per residue, pos + 1."""
    if "pos_end" in table.column_names:
        return table
    pos_end = pc.add(table.column("pos"), pa.scalar(1, table.schema.field("pos").type))
    return table.add_column(table.column_names.index("pos") + 1, "pos_end", pos_end)


def _token_batch(table: pa.Table) -> TokenBatch:
    return TokenBatch(
        seq_id=table.column("seq_id").to_numpy().astype(str),
        pos=table.column("pos").to_numpy().astype(np.int64),
        residue=table.column("residue").to_numpy().astype(str),
        act=vectors_to_numpy(table.column("act")),
        pos_end=table.column("pos_end").to_numpy().astype(np.int64),
    )
