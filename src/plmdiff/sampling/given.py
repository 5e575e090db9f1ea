"""Bring your own sequences: a model's FASTA (one file, or a glob of the DPO loop's per-iteration
files) replaces its sampling (`models[].fasta`, ARCHITECTURE.md "Sequences").

The given sequences are normalised by one documented rule and written as the model's sample shard,
(shard 0, `plmdiff.sampling.io`), so the length filter, deduplication and statistics of
`filter_samples` apply to them unchanged:
- files are read leniently: text before the first header is skipped; a header's first word is
  the source ID (kept as `source_id`), the rest is ignored; IDs are made unique as `{model}_000_{index:05d}`, numbered in file and record order;
- residues are upper-cased, white space is dropped, gap characters (`-`, `.`) of aligned FASTA are
  removed and one trailing stop (`*`) is dropped;
- any other character outside the 20 canonical amino acids (X, B, Z, U, O, J, digits, an inner `*`)
  is kept, so the filter counts the sequence as `invalid`, exactly as for sampled sequences;
- every given sequence counts as ended (it was complete where it was made); it has no perplexity
  and no generated tokens (`ppl` NaN, `n_tokens` 0). `source_id` and `source_file` columns keep
  where each sequence came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from Bio import SeqIO

from plmdiff.core.errors import DataError
from plmdiff.sampling.io import samples_table
from plmdiff.sampling.settings import Sample

GAP_CHARACTERS = "-."
STOP = "*"
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class GivenSequence:
    index: int
    source_id: str
    source_file: str
    sequence: str


def normalise_residues(text: str) -> str:
    """The residue rule of the module docstring."""
    sequence = _WHITESPACE.sub("", text).upper()
    for gap in GAP_CHARACTERS:
        sequence = sequence.replace(gap, "")
    return sequence[:-1] if sequence.endswith(STOP) else sequence


def read_given_sequences(model: str, files: Sequence[str | Path]) -> list[GivenSequence]:
    """Every record of `files`, normalised, with unique IDs (see the module docstring)."""
    out: list[GivenSequence] = []
    for path in files:
        try:
            # fasta-pearson: text before the first header (a comment, a blank line) is allowed.
            records = list(SeqIO.parse(str(path), "fasta-pearson"))
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise DataError(
                f"FASTA file {path} of model '{model}' cannot be read ({reason})"
            ) from None
        if not records:
            raise DataError(
                f"FASTA file {path} of model '{model}' holds no record (expected '>' headers)"
            )
        for record in records:
            out.append(
                GivenSequence(
                    index=len(out),
                    source_id=record.id,
                    source_file=str(path),
                    sequence=normalise_residues(str(record.seq)),
                )
            )
    return out


def given_samples_table(
    model: str, given: Sequence[GivenSequence], metadata: Mapping[str, Any]
) -> pa.Table:
    """The given sequences as the model's sample shard 0, with their sources."""
    samples = [Sample(g.index, g.sequence, True, 0, math.nan) for g in given]
    table = samples_table(samples, model, 0, metadata)
    table = table.append_column("source_id", pa.array([g.source_id for g in given], pa.string()))
    return table.append_column("source_file", pa.array([g.source_file for g in given], pa.string()))
