"""One family profile for every round: an HMM (pyhmmer), match columns only, coverage filter.

The profile comes from `potts.family` when given (an alignment: built as is; unaligned sequences:
as below), else from the base model's kept samples: a one-sequence HMM of the median-length sample
is refined by aligning the samples to it and rebuilding from that alignment (`profile_iterations`
times), which grows match states where most samples carry residues. Every set is then aligned
with hmmalign to this one profile and only its match columns are kept, so column i means the same
profile position in every round; insertions (lower-case in hmmalign's output) are dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyhmmer import easel, hmmer, plan7

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path

log = logging.getLogger(__name__)

ALPHABET = easel.Alphabet.amino()
PROFILE_NAME = "plmdiff_potts_profile"
_GAPS = str.maketrans("", "", "-.")


@dataclass(frozen=True)
class FamilyFile:
    """The sequences of `potts.family` (gaps removed) and, for an alignment, its rows."""

    ids: list[str]
    sequences: list[str]
    aligned: list[str] | None


def read_family(path: str | os.PathLike) -> FamilyFile:
    """A Stockholm alignment, an aligned FASTA (rows of one length with gaps) or plain FASTA."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"potts.family: {path} does not exist (accepted: FASTA or Stockholm)")
    text = path.read_text(errors="replace")
    if text.lstrip().startswith("# STOCKHOLM"):
        with easel.MSAFile(str(path), format="stockholm") as handle:
            msa = handle.read()
        if msa is None:
            raise DataError(f"potts.family: {path} holds no Stockholm alignment")
        names = [_text(n) for n in msa.names]
        rows = [str(r).replace(".", "-") for r in msa.alignment]
        return FamilyFile(names, [r.translate(_GAPS).upper() for r in rows], rows)
    ids, seqs = _parse_fasta(text)
    if not ids:
        raise DataError(f"potts.family: {path} has no FASTA records (accepted: FASTA or Stockholm)")
    gapped = any("-" in s or "." in s for s in seqs)
    if gapped and len({len(s) for s in seqs}) == 1:
        rows = [s.replace(".", "-") for s in seqs]
        return FamilyFile(ids, [r.translate(_GAPS).upper() for r in rows], rows)
    return FamilyFile(ids, [s.translate(_GAPS).upper() for s in seqs], None)


def _text(name: str | bytes) -> str:
    return name.decode() if isinstance(name, bytes) else name


def _parse_fasta(text: str) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    chunks: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(">"):
            ids.append(line[1:].split()[0] if line[1:].split() else f"seq{len(ids)}")
            chunks.append([])
        elif line and chunks:
            chunks[-1].append(line)
    return ids, ["".join(c) for c in chunks]


def _digital(ids: Sequence[str], sequences: Sequence[str]) -> list[Any]:
    out: list[Any] = []
    for sid, seq in zip(ids, sequences, strict=True):
        try:
            out.append(easel.TextSequence(name=sid.encode(), sequence=seq).digitize(ALPHABET))
        except ValueError as exc:
            raise DataError(f"sequence {sid}: not a protein sequence ({exc})") from None
    return out


def profile_from_sequences(
    ids: Sequence[str],
    sequences: Sequence[str],
    *,
    iterations: int,
    max_sequences: int,
    seed: int,
) -> plan7.HMM:
    """An HMM from unaligned sequences: the median-length one as seed, then `iterations` rounds
    of aligning up to `max_sequences` of them (a seeded random subset) and rebuilding."""
    if not sequences:
        raise DataError("no sequences to build the Potts profile from")
    rng = np.random.default_rng(seed)
    pick = np.arange(len(sequences))
    if len(pick) > max_sequences:
        pick = np.sort(rng.choice(len(pick), size=max_sequences, replace=False))
    chosen = [int(k) for k in pick]
    digital = _digital([ids[k] for k in chosen], [sequences[k] for k in chosen])
    lengths = np.array([len(d) for d in digital])
    seed_index = int(np.argsort(lengths, kind="stable")[len(lengths) // 2])
    builder = plan7.Builder(ALPHABET, seed=seed or 1)
    background = plan7.Background(ALPHABET)
    hmm, _, _ = builder.build(digital[seed_index], background)
    for _ in range(iterations):
        msa: Any = hmmer.hmmalign(hmm, digital, trim=True, digitize=True, cpus=1)
        msa.name = PROFILE_NAME
        hmm, _, _ = builder.build_msa(msa, background)
    hmm.name = PROFILE_NAME
    return hmm


def profile_from_alignment(ids: Sequence[str], rows: Sequence[str], *, seed: int) -> plan7.HMM:
    """hmmbuild of a given alignment (match columns: >= 50% residues, HMMER's default)."""
    msa: Any = easel.TextMSA(
        name=PROFILE_NAME,
        sequences=[
            easel.TextSequence(name=i.encode(), sequence=r) for i, r in zip(ids, rows, strict=True)
        ],
    ).digitize(ALPHABET)
    builder = plan7.Builder(ALPHABET, seed=seed or 1)
    hmm, _, _ = builder.build_msa(msa, plan7.Background(ALPHABET))
    hmm.name = PROFILE_NAME
    return hmm


def write_profile(hmm: plan7.HMM, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        hmm.write(handle)


def read_profile(path: str | os.PathLike) -> plan7.HMM:
    with plan7.HMMFile(str(path)) as handle:
        hmm = handle.read()
    if hmm is None:
        raise DataError(f"{path} holds no HMM")
    return hmm


def match_columns(row: str) -> str:
    """The match-state characters of one hmmalign row: residues in upper case and '-'."""
    return "".join(c for c in row if c == "-" or c.isupper())


def hmmalign_rows(hmm: plan7.HMM, ids: Sequence[str], sequences: Sequence[str]) -> list[str]:
    """Each sequence's hmmalign row, in input order: its aligned part only (unaligned ends
    trimmed), match residues upper case, insertions lower case, '-' a deletion, '.' padding."""
    if not sequences:
        return []
    msa: Any = hmmer.hmmalign(hmm, _digital(ids, sequences), trim=True, cpus=1)
    rows = {_text(n): str(a) for n, a in zip(msa.names, msa.alignment, strict=True)}
    return [rows[i] for i in ids]


def align_to_profile(hmm: plan7.HMM, ids: Sequence[str], sequences: Sequence[str]) -> list[str]:
    """Each sequence's match-column row (hmm.M characters, '-' for a deletion), in input order."""
    out = [match_columns(r) for r in hmmalign_rows(hmm, ids, sequences)]
    bad = [i for i, r in zip(ids, out, strict=True) if len(r) != hmm.M]
    if bad:
        raise DataError(f"hmmalign returned rows of the wrong length for {bad[:3]}")
    return out


def column_window(rows: Sequence[str], columns: tuple[int, int] | None, length: int) -> list[str]:
    """The rows cut to profile columns [first, last] (1-based, inclusive; potts.columns)."""
    if columns is None:
        return list(rows)
    first, last = columns
    if not 1 <= first <= last <= length:
        raise DataError(
            f"potts.columns = [{first}, {last}]: the profile has {length} match columns; "
            f"accepted: 1 <= first <= last <= {length}"
        )
    return [r[first - 1 : last] for r in rows]


def coverage(rows: Sequence[str]) -> np.ndarray:
    """Fraction of match columns holding a residue, per row."""
    if not rows:
        return np.zeros(0)
    return np.array([1.0 - r.count("-") / len(r) for r in rows])


def aligned_table(
    set_name: str, ids: Sequence[str], rows: Sequence[str], min_coverage: float
) -> pd.DataFrame:
    """seq_id, set, aligned, coverage, kept (coverage >= min_coverage) of every sequence."""
    cov = coverage(rows)
    return pd.DataFrame(
        {
            "seq_id": list(ids),
            "set": set_name,
            "aligned": list(rows),
            "coverage": cov,
            "kept": cov >= min_coverage,
        }
    )


def coverage_summary(table: pd.DataFrame, set_name: str, min_coverage: float) -> dict[str, object]:
    cov = table["coverage"].to_numpy()
    return {
        "set": set_name,
        "sequences": len(table),
        "kept": int(table["kept"].sum()),
        "kept_fraction": float(table["kept"].mean()) if len(table) else 0.0,
        "coverage_mean": float(cov.mean()) if len(cov) else float("nan"),
        "coverage_median": float(np.median(cov)) if len(cov) else float("nan"),
        "min_coverage": min_coverage,
    }
