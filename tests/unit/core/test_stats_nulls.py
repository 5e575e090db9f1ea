"""Permutation nulls, max-statistic adjustment and cluster bootstrap of plmdiff.core.stats."""

from __future__ import annotations

import numpy as np
import pytest

from plmdiff.core.stats import (
    balanced_accuracy_from_counts,
    bias_corrected_interval,
    cluster_bootstrap_mean_ci,
    min_permutation_p,
    permutation_p,
    permute_clusters,
    westfall_young,
)


def test_permute_clusters_moves_whole_compositions_within_size_classes():
    rng = np.random.default_rng(0)
    # 30 clusters of 4 (mixed rounds), 20 singletons, one cluster of 7 (no same-size partner).
    groups = np.concatenate([np.repeat(np.arange(30), 4), 100 + np.arange(20), np.full(7, 500)])
    y = rng.integers(0, 3, groups.size)
    compositions = {tuple(np.bincount(y[groups == g], minlength=3)) for g in range(30)}
    for _ in range(20):
        permuted = permute_clusters(y, groups, rng)
        assert np.array_equal(np.bincount(permuted), np.bincount(y))
        for g in range(30):
            assert tuple(np.bincount(permuted[groups == g], minlength=3)) in compositions
        # The lone size-7 cluster keeps its own composition.
        assert np.array_equal(
            np.bincount(permuted[groups == 500], minlength=3),
            np.bincount(y[groups == 500], minlength=3),
        )


def test_permute_clusters_does_not_depend_on_how_cluster_ids_sort():
    """Renaming the clusters (another sort order) leaves the null distribution unchanged."""
    groups = np.repeat(np.arange(12), 3)
    y = np.repeat([0, 1, 2], 12)
    renamed = (11 - groups) * 7  # reverses the sort order of the ids
    same_cluster_as_first = []
    for ids in (groups, renamed):
        rng = np.random.default_rng(1)
        # Share of permutations in which cluster 0's rows hold round 0 (exchangeable: 4/12).
        same_cluster_as_first.append(
            np.mean([permute_clusters(y, ids, rng)[0] == 0 for _ in range(3000)])
        )
    assert same_cluster_as_first[0] == pytest.approx(1 / 3, abs=0.03)
    assert same_cluster_as_first[1] == pytest.approx(1 / 3, abs=0.03)


def test_permutation_p_and_its_floor():
    null = np.array([[0.1, 0.2, 0.3, 0.4]])
    assert permutation_p(np.array([0.5]), null)[0] == pytest.approx(1 / 5)
    assert permutation_p(np.array([0.25]), null)[0] == pytest.approx(3 / 5)
    assert np.isnan(permutation_p(np.array([0.5]), np.zeros((1, 0)))[0])
    assert min_permutation_p(99) == pytest.approx(0.01)


def test_westfall_young_keeps_the_floor_for_a_single_strong_layer():
    """One layer far outside its null among 37: adjusted p = 1/(B+1), where BH over 37 layers
    with 49 permutations could never go below 37 * 0.02 / rank."""
    rng = np.random.default_rng(0)
    null = rng.normal(size=(37, 49))
    observed = rng.normal(size=37)
    observed[5] = 10.0
    adjusted = westfall_young(observed, null)
    assert adjusted[5] == pytest.approx(1 / 50)
    assert (adjusted >= permutation_p(observed, null)).all()
    observed[3] = np.nan
    assert np.isnan(westfall_young(observed, null)[3])


def test_westfall_young_controls_the_family_wise_error():
    """200 families of 10 correlated null tests: P(any adjusted p <= 0.05) within 2 SE."""
    rng = np.random.default_rng(2)
    families, tests, B = 200, 10, 99
    rejected = 0
    for _ in range(families):
        shared = rng.normal(size=(1, B + 1))
        stats = 0.7 * shared + 0.7 * rng.normal(size=(tests, B + 1))
        perm = rng.permutation(B + 1)  # which draw is the observed one: exchangeable
        stats = stats[:, perm]
        rejected += bool((westfall_young(stats[:, 0], stats[:, 1:]) <= 0.05).any())
    rate, se = rejected / families, np.sqrt(0.05 * 0.95 / families)
    assert abs(rate - 0.05) <= 2 * se


def test_cluster_bootstrap_mean_interval_covers_and_widens_with_clustering():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(50), 10)
    clustered = rng.normal(size=50)[groups] + 0.1 * rng.normal(size=500)
    low, high = cluster_bootstrap_mean_ci(clustered, groups, 1000, seed=0)
    assert low < clustered.mean() < high
    row_low, row_high = cluster_bootstrap_mean_ci(clustered, np.arange(500), 1000, seed=0)
    # Rows of a cluster are not independent: resampling rows would claim 3x the precision.
    assert (high - low) > 2 * (row_high - row_low)
    assert np.isnan(cluster_bootstrap_mean_ci(np.full(3, np.nan), np.arange(3), 10, 0)[0])


def test_bias_corrected_interval_recentres_on_the_estimate():
    draws = np.random.default_rng(0).normal(3.0, 1.0, 4000)
    low, high = bias_corrected_interval(draws, 1.0)
    assert low == pytest.approx(1.0 - 1.96, abs=0.1) and high == pytest.approx(1.0 + 1.96, abs=0.1)


def test_balanced_accuracy_ignores_absent_rounds():
    hits = np.array([8, 1, 0])
    counts = np.array([10, 2, 0])
    assert balanced_accuracy_from_counts(hits, counts) == pytest.approx((0.8 + 0.5) / 2)
