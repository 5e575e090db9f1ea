"""Baseline feature sets that a round probe must beat to show more than sequence statistics.

DPO rounds change what a model writes: lengths shift, amino-acid usage drifts. Any embedding
reflects both, so a probe that tells the rounds apart at layer 0 (token + position embedding)
may only be reading length or composition. Each baseline is probed exactly like a layer (same
folds, same C choice), and every layer is reported against the best of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from plmdiff.core.errors import DataError

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
LENGTH, COMPOSITION, DIPEPTIDES = "length", "aa_composition", "dipeptide_composition"
LAYER0 = "layer_0"
BASELINES = (LENGTH, COMPOSITION, DIPEPTIDES, LAYER0)

_INDEX = np.full(256, -1, dtype=np.int64)
_INDEX[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(len(AMINO_ACIDS))


def _codes(sequence: str) -> np.ndarray:
    """Residue indices 0..19 of the canonical amino acids (others are dropped)."""
    codes = _INDEX[np.frombuffer(sequence.upper().encode("ascii", "replace"), dtype=np.uint8)]
    return codes[codes >= 0]


def length_features(sequences: Sequence[str]) -> np.ndarray:
    """[n, 2]: length and log length (a linear probe then sees a length window either way)."""
    length = np.array([len(s) for s in sequences], dtype=np.float64)
    return np.stack([length, np.log1p(length)], 1).astype(np.float32)


def composition_features(sequences: Sequence[str]) -> np.ndarray:
    """[n, 20]: share of each canonical amino acid."""
    out = np.zeros((len(sequences), len(AMINO_ACIDS)), dtype=np.float32)
    for i, s in enumerate(sequences):
        codes = _codes(s)
        if codes.size:
            out[i] = np.bincount(codes, minlength=len(AMINO_ACIDS)) / codes.size
    return out


def dipeptide_features(sequences: Sequence[str]) -> np.ndarray:
    """[n, 400]: share of each ordered pair of adjacent canonical residues."""
    k = len(AMINO_ACIDS)
    out = np.zeros((len(sequences), k * k), dtype=np.float32)
    for i, s in enumerate(sequences):
        codes = _codes(s)
        if codes.size > 1:
            pairs = codes[:-1] * k + codes[1:]
            out[i] = np.bincount(pairs, minlength=k * k) / pairs.size
    return out


def baseline_features(
    sequences: Sequence[str], layer0: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every baseline feature matrix, rows in the order of `sequences`.

    layer0: the embedder's layer-0 pooled embedding of the same rows, when stored.
    """
    out = {
        LENGTH: length_features(sequences),
        COMPOSITION: composition_features(sequences),
        DIPEPTIDES: dipeptide_features(sequences),
    }
    if layer0 is not None:
        if layer0.shape[0] != len(sequences):
            raise DataError(f"layer 0 has {layer0.shape[0]} rows for {len(sequences)} sequences")
        out[LAYER0] = np.asarray(layer0, dtype=np.float32)
    return out


def sequences_for(seq_ids: Iterable[str], sequence_of: Mapping[str, str], source: str) -> list[str]:
    """The sequence of each seq_id; an id without one means the FASTA and pooled rows disagree."""
    out = []
    for seq_id in seq_ids:
        try:
            out.append(sequence_of[seq_id])
        except KeyError:
            raise DataError(
                f"pooled row '{seq_id}' has no sequence in {source}; rerun the extraction"
            ) from None
    return out
