"""Feature alignment: Hungarian matching on decoder cosine, coverage, union."""

from __future__ import annotations

import numpy as np
import pytest

from plmdiff.core.errors import DataError
from plmdiff.diff.alignment import (
    coverage,
    decoder_cosine,
    hungarian_match,
    max_cosine,
    rowwise_cosine,
    union_rows,
)


def _atoms(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hungarian_recovers_a_permutation_of_the_same_dictionary():
    a = _atoms(200, 64)
    rng = np.random.default_rng(1)
    perm = rng.permutation(200)
    # b's row j is a's row perm[j], rescaled and slightly perturbed
    b = a[perm] * rng.uniform(0.5, 2.0, size=(200, 1)) + rng.normal(0, 0.02, size=(200, 64))
    match = hungarian_match(a, b)
    inverse = np.argsort(perm)
    assert np.array_equal(match.partner, inverse)
    assert match.cosine.min() > 0.9
    assert match.matched(0.9).all()
    assert match.identity_fraction() == pytest.approx(np.mean(inverse == np.arange(200)))


def test_hungarian_is_one_to_one_where_greedy_is_not():
    # Greedy max-cosine would give both rows of a the same partner (b[0]).
    a = np.array([[1.0, 0.0], [0.8, 0.6]], dtype=np.float32)
    b = np.array([[0.9, 0.436], [0.0, 1.0]], dtype=np.float32)
    assert max_cosine(a, b).tolist() == pytest.approx(decoder_cosine(a, b).max(1).tolist())
    match = hungarian_match(a, b)
    assert sorted(match.partner.tolist()) == [0, 1]
    assert match.cosine.sum() == pytest.approx(decoder_cosine(a, b)[[0, 1], match.partner].sum())


def test_rectangular_matching_leaves_extra_rows_unmatched():
    a = _atoms(10, 16)
    match = hungarian_match(a, a[:6])
    assert (match.partner[:6] == np.arange(6)).all() and (match.partner[6:] == -1).all()
    assert not match.matched(0.0)[6:].any()


def test_unrelated_dictionaries_do_not_match_above_threshold():
    match = hungarian_match(_atoms(100, 256, seed=2), _atoms(100, 256, seed=3))
    assert match.matched(0.7).mean() == 0.0


def test_coverage_of_a_union():
    a = _atoms(50, 32, seed=4)
    b = _atoms(50, 32, seed=5)
    union = union_rows([a, b])
    assert union.shape == (100, 32)
    cov = coverage(union, a, threshold=0.99)
    assert cov.a_in_b == pytest.approx(0.5)  # a's half of the union is in a, b's is not
    assert cov.b_in_a == pytest.approx(1.0)
    assert rowwise_cosine(a, a) == pytest.approx(np.ones(50), abs=1e-6)


def test_zero_rows_and_bad_shapes():
    a = np.zeros((2, 4), dtype=np.float32)
    assert np.all(decoder_cosine(a, _atoms(3, 4)) == 0)
    with pytest.raises(DataError, match="different width"):
        decoder_cosine(_atoms(2, 4), _atoms(2, 5))
    with pytest.raises(DataError, match="different shape"):
        rowwise_cosine(_atoms(2, 4), _atoms(3, 4))
    with pytest.raises(DataError):
        union_rows([])
