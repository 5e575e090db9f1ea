"""FASTA in and out with Biopython, headers as ARCHITECTURE.md ("Sequences") fixes them.

A header is `>{seq_id} model={model} ppl={ppl:.4f} len={len}`; extra `key=value` fields are kept.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path

_DIGITS = re.compile(r"(\d+)")


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


def _natural_key(path: str) -> list[object]:
    """iteration2 before iteration10: numbers in a path compare as numbers."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(path)]


def resolve_fasta_sources(spec: str, key: str, base_dir: Path | None = None) -> list[Path]:
    """The files `spec` (a path or a glob) names, in natural order; relative to `base_dir`."""
    pattern = spec if base_dir is None or Path(spec).is_absolute() else str(base_dir / spec)
    if glob.has_magic(pattern):
        files = sorted((p for p in glob.glob(pattern) if Path(p).is_file()), key=_natural_key)
    else:
        files = [pattern] if Path(pattern).is_file() else []
    if not files:
        what = "matches no file" if glob.has_magic(pattern) else "does not exist"
        raise DataError(f"{key} = '{spec}' {what}; give a FASTA file or a glob of FASTA files")
    return [Path(f) for f in files]
