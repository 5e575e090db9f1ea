"""Calibration of the sanity-check nulls on null data: rejection rate within 2 SE of alpha."""

from __future__ import annotations

import numpy as np

from plmdiff.sanity.checks import crossfit_distances, mantel_trend_test, variance_ratio_test

ALPHA = 0.05
SIMULATIONS = 200


def _clustered_null(rng: np.random.Generator, K: int, clusters: int, size: int, d: int):
    """Rounds that do not differ; clusters of near-duplicates that each hold one round."""
    groups = np.repeat(np.arange(clusters), size)
    y = np.repeat(rng.permutation(np.arange(clusters) % K), size)
    X = (rng.normal(size=(clusters, d)) * 2.0)[groups] + rng.normal(size=(groups.size, d))
    return X, y, groups


def _bound() -> float:
    return 2 * np.sqrt(ALPHA * (1 - ALPHA) / SIMULATIONS)


def test_variance_ratio_cluster_permutation_is_calibrated_and_row_permutation_is_not():
    rng = np.random.default_rng(0)
    clustered, rows = [], []
    for i in range(SIMULATIONS):
        X, y, groups = _clustered_null(rng, K=3, clusters=24, size=4, d=4)
        clustered.append(variance_ratio_test(X, y, 99, seed=i, groups=groups).p_value <= ALPHA)
        rows.append(variance_ratio_test(X, y, 99, seed=i).p_value <= ALPHA)
    assert abs(np.mean(clustered) - ALPHA) <= _bound(), np.mean(clustered)
    # Permuting single sequences ignores the near-duplicates: far too many rejections.
    assert np.mean(rows) > 0.2


def test_mantel_with_crossfit_distances_is_calibrated():
    """Five rounds (exact floor 2/120 <= alpha) with no differences and unequal spreads."""
    rng = np.random.default_rng(1)
    rejections = []
    for i in range(SIMULATIONS):
        K = 5
        y = np.repeat(np.arange(K), [8, 12, 16, 20, 24])
        groups = np.arange(y.size)
        X = rng.normal(size=(y.size, 6)) * np.linspace(0.5, 2.0, K)[y][:, None]
        D = crossfit_distances(X, y, groups, K, seed=i)
        test = mantel_trend_test(D, 99, seed=i)
        assert test.testable and test.exact
        rejections.append(test.p_value <= ALPHA)
    assert abs(np.mean(rejections) - ALPHA) <= _bound(), np.mean(rejections)
