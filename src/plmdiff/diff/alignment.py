"""Which features of two SAEs are the same feature: decoder cosines, Hungarian matching, coverage.

SAE features have no canonical order: two replicas trained on different folds learn the same
dictionary in some permutation. A one-to-one matching that maximises the summed decoder cosine
(the assignment problem, solved exactly by scipy.optimize.linear_sum_assignment) recovers that
permutation; a matched pair counts as the same feature when its cosine reaches a threshold.
Fine-tuned SAEs (ft_*, pooled) keep the indices of the base SAE they started from, so features of
one fold are identified by base index and only replicas of different folds need matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from plmdiff.core.errors import DataError


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero, so their cosines are 0)."""
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


def decoder_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of `a` [n, d] with every row of `b` [m, d]."""
    if a.shape[1] != b.shape[1]:
        raise DataError(
            f"decoders of different width cannot be compared ({a.shape[1]} vs {b.shape[1]})"
        )
    return unit_rows(a) @ unit_rows(b).T


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of row i of `a` with row i of `b` (index-aligned dictionaries)."""
    if a.shape != b.shape:
        raise DataError(f"decoders of different shape cannot be compared ({a.shape} vs {b.shape})")
    return np.sum(unit_rows(a) * unit_rows(b), axis=1)


@dataclass(frozen=True)
class Matching:
    """For each row of `a`: its partner in `b` (-1 when `b` has fewer rows) and their cosine."""

    partner: np.ndarray
    cosine: np.ndarray

    def matched(self, threshold: float) -> np.ndarray:
        return (self.partner >= 0) & (self.cosine >= threshold)

    def identity_fraction(self) -> float:
        """Fraction of rows matched to the same index (index-aligned dictionaries stay put)."""
        return float(np.mean(self.partner == np.arange(self.partner.size)))


def hungarian_match(a: np.ndarray, b: np.ndarray) -> Matching:
    """One-to-one matching of the rows of `a` and `b` maximising the summed decoder cosine."""
    cos = decoder_cosine(a, b)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    partner = np.full(a.shape[0], -1, dtype=np.int64)
    cosine = np.full(a.shape[0], np.nan, dtype=np.float64)
    partner[rows] = cols
    cosine[rows] = cos[rows, cols]
    return Matching(partner=partner, cosine=cosine)


def max_cosine(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each row of `a`, its highest cosine with any row of `b` (chunked: b may be a union)."""
    ua, ub = unit_rows(a), unit_rows(b)
    out = np.empty(ua.shape[0], dtype=np.float64)
    for start in range(0, ua.shape[0], chunk):
        out[start : start + chunk] = (ua[start : start + chunk] @ ub.T).max(axis=1)
    return out


@dataclass(frozen=True)
class Coverage:
    """How well one dictionary's features are found in another (max cosine >= threshold)."""

    n_a: int
    n_b: int
    a_in_b: float
    b_in_a: float
    mean_best_cosine_a: float
    mean_best_cosine_b: float


def coverage(a: np.ndarray, b: np.ndarray, threshold: float) -> Coverage:
    """Fraction of `a`'s rows with a match in `b` and vice versa (not one-to-one)."""
    best_a = max_cosine(a, b)
    best_b = max_cosine(b, a)
    return Coverage(
        n_a=int(a.shape[0]),
        n_b=int(b.shape[0]),
        a_in_b=float(np.mean(best_a >= threshold)),
        b_in_a=float(np.mean(best_b >= threshold)),
        mean_best_cosine_a=float(np.mean(best_a)),
        mean_best_cosine_b=float(np.mean(best_b)),
    )


def union_rows(decoders: Sequence[np.ndarray]) -> np.ndarray:
    """The union dictionary: every row of every decoder, stacked."""
    if not decoders:
        raise DataError("the union of no dictionaries is empty")
    return np.concatenate([np.asarray(d, dtype=np.float32) for d in decoders], axis=0)
