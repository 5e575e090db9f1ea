"""FASTA in and out with Biopython, headers as ARCHITECTURE.md ("Sequences") fixes them.

A header is `>{seq_id} model={model} ppl={ppl:.4f} len={len}`; extra `key=value` fields are kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path


@dataclass
class SequenceEntry:
    seq_id: str
    sequence: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.fields.get("model")


def sequence_id(model: str, shard: int, index: int) -> str:
    """IDs are unique across the study: model, sampling shard and index within the shard."""
    return f"{model}_{shard:03d}_{index:05d}"


def _parse_fields(description: str) -> dict[str, str]:
    out = {}
    for token in description.split()[1:]:
        if "=" in token:
            key, value = token.split("=", 1)
            out[key] = value
    return out


def read_fasta(path: str | os.PathLike) -> Iterator[SequenceEntry]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FASTA file {path} does not exist")
    for record in SeqIO.parse(str(path), "fasta"):
        yield SequenceEntry(record.id, str(record.seq), _parse_fields(record.description))


def write_fasta(path: str | os.PathLike, entries: Iterable[SequenceEntry]) -> int:
    """Write entries atomically; returns how many were written."""
    records = []
    for entry in entries:
        desc = " ".join(f"{k}={v}" for k, v in entry.fields.items())
        records.append(SeqRecord(Seq(entry.sequence), id=entry.seq_id, description=desc))
    # Biopython wraps at 60 columns; one line per sequence keeps files grep- and diff-friendly.
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        SeqIO.write(records, handle, "fasta-2line")
    return len(records)
