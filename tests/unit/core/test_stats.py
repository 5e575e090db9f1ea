"""Ranks and Benjamini-Hochberg, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from plmdiff.core.stats import average_ranks, benjamini_hochberg


def test_bh_matches_scipy_reference():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=300), rng.uniform(0, 1e-4, size=30), [0.0, 1.0, 1.0]])
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)


def test_bh_ignores_untested_features():
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    q = benjamini_hochberg(p)
    assert np.isnan(q[[1, 4]]).all()
    np.testing.assert_allclose(q[[0, 2, 3]], stats.false_discovery_control(p[[0, 2, 3]]))
    assert np.isnan(benjamini_hochberg(np.array([np.nan]))).all()
    with pytest.raises(ValueError):
        benjamini_hochberg(np.array([1.5]))


def test_average_ranks_share_ties():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
