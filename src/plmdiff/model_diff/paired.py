"""Paired token shards: the same sequences embedded by every checkpoint, read side by side.

The shared set is the base model's kept samples (its first `max_sequences`) plus, optionally,
`model_diff.sequences` (IDs prefixed `given_`). Every checkpoint embeds it with the activations
stage's extraction (plmdiff.activations.extraction) into token parts of the usual format. The
parts of two models align row by row: the split into parts, the batching and the row groups
depend only on the FASTA and the token count, which the checkpoints share (their tokenizers must
agree; `check_alignment` verifies (seq_id, pos) of every row before anything is trained).

Readers give [n, n_models, d_model] float32 tensors, models in config order (base first).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from plmdiff.activations.extraction import ExtractionSettings
from plmdiff.activations.format import vectors_to_numpy
from plmdiff.activations.loader import shuffled_batches
from plmdiff.activations.readers import keep_mask, open_parquet, seq_id_set, token_files
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry, read_fasta, write_fasta

GIVEN_PREFIX = "given_"


# ----------------------------------------------------------------------------- the shared set


def shared_sequences(
    base_fasta: str | os.PathLike,
    extra_fasta: str | os.PathLike | None,
    max_sequences: int,
) -> list[SequenceEntry]:
    """The first `max_sequences` of the base model's FASTA, then as many of `extra_fasta`
    (renamed `given_{id}`, so they never collide with sampled IDs)."""
    base = list(read_fasta(base_fasta))[:max_sequences]
    if not base:
        raise DataError(f"{base_fasta}: the base model kept no sequences to embed for model_diff")
    out = [SequenceEntry(e.seq_id, e.sequence, {"source": "base"}) for e in base]
    if extra_fasta is not None:
        extra = list(read_fasta(extra_fasta))[:max_sequences]
        if not extra:
            raise DataError(f"model_diff.sequences: {extra_fasta} holds no sequences")
        out += [
            SequenceEntry(f"{GIVEN_PREFIX}{e.seq_id}", e.sequence.upper(), {"source": "given"})
            for e in extra
        ]
    seen: set[str] = set()
    for e in out:
        if e.seq_id in seen:
            raise DataError(f"model_diff sequences: ID {e.seq_id} occurs twice")
        seen.add(e.seq_id)
    return out


def write_shared_sequences(
    base_fasta: str | os.PathLike,
    extra_fasta: str | os.PathLike | None,
    max_sequences: int,
    out: str | os.PathLike,
) -> int:
    return write_fasta(out, shared_sequences(base_fasta, extra_fasta, max_sequences))


def paired_extraction_settings(
    activations: ExtractionSettings, layers: Sequence[int], shards: int
) -> ExtractionSettings:
    """The activations settings with model_diff's layers (pooled and per token) and parts."""
    chosen = tuple(sorted(int(x) for x in layers))
    return replace(activations, layers=chosen, token_layers=chosen, shards=shards)


def is_held_out(seq_id: str, seed: int, fraction: float) -> bool:
    """A seeded hash split: the same sequences are held out in every job and layer."""
    digest = hashlib.sha256(f"{seed}\x1f{seq_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def split_ids(seq_ids: Sequence[str], seed: int, fraction: float) -> tuple[list[str], list[str]]:
    """(train, held out) IDs; each keeps at least one sequence when there are two or more."""
    held = [s for s in seq_ids if is_held_out(s, seed, fraction)]
    train = [s for s in seq_ids if not is_held_out(s, seed, fraction)]
    if len(seq_ids) >= 2 and not held:
        held, train = train[-1:], train[:-1]
    if len(seq_ids) >= 2 and not train:
        train, held = held[:1], held[1:]
    return train, held


# ----------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class PairedLayer:
    """One layer's token parts of every model (models in config order, the base first)."""

    models: tuple[str, ...]
    files: tuple[tuple[Path, ...], ...]  # [part][model]
    d_model: int

    @classmethod
    def open(cls, layer_dirs: Mapping[str, str | os.PathLike]) -> PairedLayer:
        """The parts of each model's layer directory; every model must have the same part
        names, row-group sizes and width."""
        models = tuple(layer_dirs)
        per_model = [token_files([layer_dirs[m]]) for m in models]
        names = [[f.name for f in files] for files in per_model]
        for m, n in zip(models, names, strict=True):
            if n != names[0]:
                raise DataError(
                    f"model_diff: {layer_dirs[m]} holds parts {n}, {layer_dirs[models[0]]} "
                    f"holds {names[0]}; every model embeds the same parts"
                )
        files = tuple(zip(*per_model, strict=True))
        widths = set()
        for part in files:
            groups = []
            for f in part:
                meta = open_parquet(f).metadata
                groups.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
                widths.add(open_parquet(f).schema_arrow.field("act").type.list_size)
            if any(g != groups[0] for g in groups):
                raise DataError(
                    f"model_diff: the row groups of {part[0].name} differ between models "
                    f"({', '.join(models)}): the checkpoints embedded different tokens "
                    "(different tokenizers?)"
                )
        if len(widths) != 1:
            raise DataError(f"model_diff: the models' activations differ in width {sorted(widths)}")
        return cls(models=models, files=files, d_model=widths.pop())

    def select(self, models: Sequence[str]) -> PairedLayer:
        """The same layer restricted to `models` (in that order)."""
        idx = [self.models.index(m) for m in models]
        files = tuple(tuple(part[i] for i in idx) for part in self.files)
        return PairedLayer(models=tuple(models), files=files, d_model=self.d_model)

    def units(self) -> list[tuple[tuple[Path, ...], int]]:
        """(the part's file of every model, row group) of every non-empty row group."""
        out = []
        for part in self.files:
            meta = open_parquet(part[0]).metadata
            out += [(part, i) for i in range(meta.num_row_groups) if meta.row_group(i).num_rows]
        return out


def check_alignment(layer: PairedLayer) -> int:
    """Every row has the same (seq_id, pos) in every model's files; the row count."""
    rows = 0
    for part in layer.files:
        ref = open_parquet(part[0]).read(columns=["seq_id", "pos"])
        for model, f in zip(layer.models[1:], part[1:], strict=True):
            other = open_parquet(f).read(columns=["seq_id", "pos"])
            if not (
                ref.column("seq_id").equals(other.column("seq_id"))
                and ref.column("pos").equals(other.column("pos"))
            ):
                raise DataError(
                    f"model_diff: {f} does not align token by token with {part[0]} "
                    f"(model {model} vs {layer.models[0]}); rerun its model_diff_extract job"
                )
        rows += ref.num_rows
    return rows


# ----------------------------------------------------------------------------- readers


class _PairedReader:
    """One row group of every model as a float32 tensor [n, n_models * d_model]."""

    def __init__(self, keep: pa.Array | None) -> None:
        self.keep = keep
        self._local = threading.local()

    def _file(self, path: Path) -> Any:
        handles = self._local.__dict__.setdefault("handles", {})
        if path not in handles:
            handles[path] = open_parquet(path, read_dictionary=["seq_id"])
        return handles[path]

    def __call__(self, unit: tuple[tuple[Path, ...], int] | None) -> Any:
        import torch

        if unit is None:
            return None
        files, group = unit
        mask = None
        if self.keep is not None:
            ids = self._file(files[0]).read_row_group(group, columns=["seq_id"], use_threads=False)
            mask = torch.from_numpy(keep_mask(ids.column("seq_id"), self.keep))
        parts = []
        for f in files:
            column = self._file(f).read_row_group(group, columns=["act"], use_threads=False)
            column = column.column("act")
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            acts = torch.from_dlpack(column.flatten()).reshape(len(column), column.type.list_size)
            parts.append(acts if mask is None else acts[mask])
        return torch.cat([p.float() for p in parts], dim=1)


def iter_paired(
    layer: PairedLayer,
    batch_size: int,
    *,
    shuffle_buffer: int,
    seed: int,
    seq_ids: Collection[str] | None = None,
    loop: bool = False,
    read_threads: int | None = None,
) -> Iterator[Any]:
    """Shuffled paired batches [batch, n_models, d_model] through the SAE loader's shuffle
    buffer (plmdiff.activations.loader.shuffled_batches): the rows of one token stay together."""
    keep = seq_id_set(seq_ids)
    n_models = len(layer.models)
    batches = shuffled_batches(
        layer.units(),
        _PairedReader(keep),
        n_models * layer.d_model,
        batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        loop=loop,
        read_threads=read_threads,
        empty=DataError(
            f"model_diff: no paired rows to train on in {layer.files[0][0].parent}"
            + (" for the training sequences" if keep is not None else "")
        ),
    )
    for batch in batches:
        yield batch.reshape(len(batch), n_models, layer.d_model)


@dataclass
class PairedRows:
    """Paired rows in file order, with their labels."""

    seq_id: np.ndarray  # str [n]
    pos: np.ndarray  # int [n]
    residue: np.ndarray  # str [n]
    act: np.ndarray  # float32 [n, n_models, d_model]

    def __len__(self) -> int:
        return len(self.seq_id)


def iter_paired_rows(
    layer: PairedLayer, *, seq_ids: Collection[str] | None = None
) -> Iterator[PairedRows]:
    """Row groups in file order (no shuffling), restricted to `seq_ids` when given."""
    keep = seq_id_set(seq_ids)
    for files, group in layer.units():
        labels = open_parquet(files[0]).read_row_group(group, columns=["seq_id", "pos", "residue"])
        mask = None if keep is None else keep_mask(labels.column("seq_id"), keep)
        if mask is not None and not mask.any():
            continue
        acts = []
        for f in files:
            column = open_parquet(f).read_row_group(group, columns=["act"]).column("act")
            matrix = vectors_to_numpy(column)
            acts.append(matrix if mask is None else matrix[mask])
        seq = labels.column("seq_id").to_numpy().astype(str)
        pos = labels.column("pos").to_numpy().astype(np.int64)
        res = labels.column("residue").to_numpy().astype(str)
        if mask is not None:
            seq, pos, res = seq[mask], pos[mask], res[mask]
        yield PairedRows(seq_id=seq, pos=pos, residue=res, act=np.stack(acts, axis=1))
