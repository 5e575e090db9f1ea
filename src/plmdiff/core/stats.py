"""Statistics shared by the stages: multiple testing, permutation nulls, cluster bootstrap."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values; NaN p-values (untested features) stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    m = int(tested.sum())
    if m == 0:
        return q
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    pt = p[tested]
    order = np.argsort(pt, kind="stable")
    scaled = pt[order] * m / np.arange(1, m + 1)
    # q_(i) = min over j >= i of p_(j) m / j: a running minimum from the largest p down.
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    q[tested] = out
    return q


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata's 'average')."""
    return sps.rankdata(values, method="average")


# ----------------------------------------------------------------------------- permutation nulls


def permutation_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided p = (1 + #{null >= observed}) / (1 + B) per row; null [..., B].

    NaN where observed is NaN or there is no null (B = 0). The tolerance keeps a null value
    that equals the observed one up to float round-off on the `>=` side.
    """
    observed = np.asarray(observed, dtype=float)
    null = np.asarray(null, dtype=float)
    B = null.shape[-1]
    if B == 0:
        return np.full(observed.shape, np.nan)
    exceed = (null >= observed[..., None] - 1e-12).sum(-1)
    p = (1 + exceed) / (1 + B)
    return np.where(np.isnan(observed), np.nan, p)


def westfall_young(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Single-step max-T (Westfall-Young) adjusted p across tests from shared permutations.

    observed [m], null [m, B]: row i of the null is test i under the *same* B permutations,
    so the maximum over tests of each permutation is a draw of the family's largest statistic
    under the global null. p_adj(i) = (1 + #{b: max_j null[j, b] >= observed[i]}) / (1 + B)
    controls the family-wise error rate with any dependence between the tests, and its floor is
    1/(B + 1) however many tests there are (Bonferroni or BH would multiply it). Tests with a
    NaN statistic are left out of the maximum and get NaN.
    """
    observed = np.asarray(observed, dtype=float)
    null = np.asarray(null, dtype=float)
    tested = ~np.isnan(observed)
    if null.shape[-1] == 0 or not tested.any():
        return np.full(observed.shape, np.nan)
    maxima = np.nanmax(np.where(tested[:, None], null, -np.inf), axis=0)
    return np.where(tested, permutation_p(observed, np.broadcast_to(maxima, null.shape)), np.nan)


def permute_clusters(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels permuted with clusters as the unit: a null of 'no round signal' for clustered rows.

    Each cluster passes its whole label composition (the multiset of its rows' labels) to a
    cluster of the same size drawn without replacement, and the labels land on that cluster's
    rows in random order. Round sizes are kept exactly, each cluster keeps a composition that a
    real cluster of its size had (mode collapse stays clumped), and neither the names of the
    clusters nor the order of the rows enters the distribution. Near-duplicates move together,
    so a statistic that rewards them (variance ratio, ungrouped probes) is not made to look
    significant by a null of single rows. A cluster whose size no other cluster shares keeps
    its own composition: the test is conditional on it.
    """
    y = np.asarray(y)
    _, codes, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    n = y.size
    # Rows grouped by cluster, in random order inside each cluster.
    order = np.lexsort((rng.random(n), codes))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    donor = np.arange(sizes.size)
    for size in np.unique(sizes):
        members = np.flatnonzero(sizes == size)
        donor[members] = members[rng.permutation(members.size)]
    cluster_sorted = codes[order]
    within = np.arange(n) - starts[cluster_sorted]
    permuted = np.empty_like(y)
    permuted[order] = y[order[starts[donor[cluster_sorted]] + within]]
    return permuted


def min_permutation_p(permutations: int) -> float:
    """The smallest p a test with this many random permutations can report."""
    return 1.0 / (permutations + 1)


# ----------------------------------------------------------------------------- cluster bootstrap


def cluster_bootstrap_counts(
    groups: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """How often each cluster is drawn in each of `n_boot` cluster-bootstrap samples.

    Returns (codes [n]: cluster index of each row, counts float32 [n_boot, G]). Resampling
    clusters, not rows, keeps near-duplicates together, so an interval is not made narrow by
    counting one collapsed sequence many times.
    """
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    G = int(codes.max()) + 1 if codes.size else 0
    counts = rng.multinomial(G, np.full(G, 1.0 / G), size=n_boot).astype(np.float32)
    return codes, counts


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the last axis (NaN samples ignored)."""
    tail = (1.0 - level) / 2
    with np.errstate(all="ignore"):
        return (
            np.nanquantile(samples, tail, axis=-1),
            np.nanquantile(samples, 1.0 - tail, axis=-1),
        )


def bias_corrected_interval(
    samples: np.ndarray, estimate: np.ndarray | float, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the last axis, shifted by the bootstrap estimate of bias.

    For statistics that grow with noise (a variance ratio, a distance between sample means),
    a resample adds its own noise on top of the sample's, so the draws sit above the estimate
    and a plain percentile interval can miss it entirely; shifting by mean(draws) - estimate
    removes that first-order bias.
    """
    low, high = percentile_interval(samples, level)
    with np.errstate(all="ignore"):
        bias = np.nanmean(samples, axis=-1) - np.asarray(estimate, dtype=float)
    return low - bias, high - bias


def cluster_bootstrap_mean_ci(
    values: np.ndarray,
    groups: np.ndarray,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Cluster-bootstrap percentile interval of the mean of `values` (one value per row).

    For per-model KL: rows are tokens or sequences, groups their sequence clusters (or the
    sequence itself for tokens); the resampled mean is sum_c w_c S_c / sum_c w_c N_c with w_c the
    number of times cluster c is drawn. NaN values are ignored.
    """
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan"), float("nan")
    codes, counts = cluster_bootstrap_counts(
        np.asarray(groups)[keep], n_boot, np.random.default_rng(seed)
    )
    sums = np.bincount(codes, weights=values[keep])
    sizes = np.bincount(codes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (counts @ sums) / (counts @ sizes)
    low, high = percentile_interval(means, level)
    return float(low), float(high)


def balanced_accuracy_from_counts(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean per-class recall from per-class correct counts and class sizes [..., K].

    Classes with no rows are left out of the mean (their recall is undefined).
    """
    hits = np.asarray(hits, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(counts > 0, hits / np.where(counts > 0, counts, 1.0), np.nan)
        return np.nanmean(recall, axis=-1)
