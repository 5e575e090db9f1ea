"""sae.base.sequences: more sequences for the base SAE than the base model's samples.

A study samples ~1000 sequences per model, too few unique tokens for an SAE with tens of
thousands of features. `sae.base.sequences` (a FASTA file or glob, e.g. the natural family)
adds sequences that train the base SAE together with the base model's samples. They are written
as the FASTA of the token source paths.SAE_BASE_SOURCE and embedded by the extraction rules like
a model's samples (by the base model under the `self` embedder).

Residues follow plmdiff.sampling.given's rule (upper-cased, gaps and one trailing stop removed).
Bad input fails with one message naming the key and the file: a file with no record, a character
that is no letter, a file of nucleotide sequences, or no sequence left. Sequences with letters
outside the 20 canonical amino acids (X, B, Z, U, O, J) are dropped and counted, as the length
filter drops them from sampled sequences.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from Bio import SeqIO

from plmdiff.config.paths import SAE_BASE_SOURCE
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry
from plmdiff.sampling.given import normalise_residues

KEY = "sae.base.sequences"
CANONICAL = frozenset("ACDEFGHIKLMNPQRSTVWY")
# A file whose every sequence uses only these letters is DNA or RNA, not protein.
NUCLEOTIDES = frozenset("ACGTUN")


@dataclass(frozen=True)
class BaseSequences:
    """The kept sequences (IDs `{SAE_BASE_SOURCE}_000_{index:05d}`) and what was dropped."""

    entries: list[SequenceEntry]
    n_records: int
    n_non_canonical: int
    n_empty: int

    def stats(self, files: Sequence[str | os.PathLike]) -> dict[str, object]:
        return {
            "key": KEY,
            "files": [str(f) for f in files],
            "records": self.n_records,
            "kept": len(self.entries),
            "dropped_non_canonical": self.n_non_canonical,
            "dropped_empty": self.n_empty,
        }


def _records(path: Path) -> list[tuple[str, str]]:
    """(source ID, normalised residues) of every record of one file."""
    try:
        # fasta-pearson: text before the first header (a comment, a blank line) is allowed.
        records = list(SeqIO.parse(str(path), "fasta-pearson"))
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataError(f"{KEY}: {path} cannot be read as FASTA ({reason})") from None
    if not records:
        raise DataError(f"{KEY}: {path} holds no FASTA record (expected '>' headers)")
    out = []
    for record in records:
        residues = normalise_residues(str(record.seq))
        odd = sorted({c for c in residues if not c.isalpha()})
        if odd:
            raise DataError(
                f"{KEY}: {path}, record {record.id} holds {odd[0]!r}, which is no amino-acid "
                "letter; give protein sequences"
            )
        out.append((record.id, residues))
    if all(set(seq) <= NUCLEOTIDES for _, seq in out):
        raise DataError(
            f"{KEY}: {path} holds nucleotide sequences (only A, C, G, T/U, N); give protein "
            "sequences"
        )
    return out


def read_base_sequences(files: Sequence[str | os.PathLike]) -> BaseSequences:
    """The sequences of `files` in file and record order, with the module docstring's rule."""
    entries: list[SequenceEntry] = []
    n_records = n_non_canonical = n_empty = 0
    for path in files:
        for source_id, residues in _records(Path(path)):
            n_records += 1
            if not residues:
                n_empty += 1
            elif not set(residues) <= CANONICAL:
                n_non_canonical += 1
            else:
                seq_id = f"{SAE_BASE_SOURCE}_000_{len(entries):05d}"
                entries.append(
                    SequenceEntry(seq_id, residues, {"model": SAE_BASE_SOURCE, "source": source_id})
                )
    if not entries:
        raise DataError(
            f"{KEY}: no protein sequence left in {', '.join(str(f) for f in files)} "
            f"({n_records} records: {n_non_canonical} with letters outside the 20 canonical "
            f"amino acids, {n_empty} empty)"
        )
    return BaseSequences(entries, n_records, n_non_canonical, n_empty)
