"""Inference on out-of-fold probe predictions: cluster-bootstrap intervals, margin tests.

Both work on which sequences each fitted probe got right (its out-of-fold predictions of the
grouped folds), with sequence clusters as the unit of resampling, so near-duplicates are never
counted as independent evidence.
"""

from __future__ import annotations

import numpy as np

from plmdiff.core.stats import (
    cluster_bootstrap_counts,
    percentile_interval,
    permutation_p,
    westfall_young,
)

# Bootstrap draws / sign flips evaluated per matrix product (bounds memory, not results).
_CHUNK = 256


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    """Weight of each row in the balanced accuracy: 1 / (rounds present x its round's size)."""
    sizes = np.bincount(y)
    present = int((sizes > 0).sum())
    return 1.0 / (present * sizes[y])


def bootstrap_balanced_accuracy(
    correct: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_classes: int,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-bootstrap percentile interval of the balanced accuracy of each row of `correct`.

    correct: bool [m, n], whether feature set i predicted row j's round (out of fold). A
    resample draws clusters with replacement; each round's recall is recomputed on the drawn
    rows (a round that was not drawn is left out of that resample's mean). Training is not
    repeated: the interval covers which sequences were sampled, not the refit of the probe.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=np.float32))
    m = correct.shape[0]
    if n_boot == 0:
        return np.full(m, np.nan), np.full(m, np.nan)
    codes, draws = cluster_bootstrap_counts(groups, n_boot, np.random.default_rng(seed))
    G = draws.shape[1]
    onehot = np.eye(n_classes, dtype=np.float32)[y]  # [n, K]
    # Per cluster and round: rows, and correct rows of every feature set.
    rows = np.zeros((G, n_classes), dtype=np.float32)
    np.add.at(rows, codes, onehot)
    hits = np.zeros((G, m * n_classes), dtype=np.float32)
    np.add.at(hits, codes, (correct.T[:, :, None] * onehot[:, None, :]).reshape(len(y), -1))
    samples = np.empty((m, n_boot))
    for b0 in range(0, n_boot, _CHUNK):
        w = draws[b0 : b0 + _CHUNK]
        n_k = (w @ rows)[:, None, :]  # [B, 1, K]
        h = (w @ hits).reshape(len(w), m, n_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(n_k > 0, h / np.maximum(n_k, 1e-30), np.nan)
            samples[:, b0 : b0 + len(w)] = np.nanmean(recall, axis=-1).T
    return percentile_interval(samples, level)


def margin_test(
    correct: np.ndarray,
    baseline_correct: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_flips: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced-accuracy margin of each feature set over a baseline, with a paired test.

    correct [L, n] and baseline_correct [n]: out-of-fold hits on the same rows and folds. The
    margin is sum_i w_i (c_li - b_i) with the balanced-accuracy weights w. Under the null that
    a layer's probe and the baseline's are equally good, their hits on a cluster are
    exchangeable, so swapping them cluster by cluster (a sign flip of the cluster's summed
    difference) draws from the null: a paired permutation test in the spirit of McNemar's, on
    clusters. The same flips serve every layer, so the max-statistic adjustment across layers
    applies (Westfall-Young). One-sided: is the layer better than the baseline?

    Returns (margin [L], p [L], family-wise adjusted p [L]); p's floor is 1/(n_flips + 1).
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    diff = (correct - np.asarray(baseline_correct, dtype=np.float64)[None]) * _balanced_weights(y)
    per_cluster = np.zeros((correct.shape[0], int(codes.max()) + 1))
    np.add.at(per_cluster.T, codes, diff.T)
    margin = per_cluster.sum(1)
    # float32 for the many flips: the sums are compared with a 1e-12-tolerant `>=`, and a margin
    # is a multiple of 1/(K n_k); rounding both sides the same way keeps ties as ties.
    flips_matrix = per_cluster.astype(np.float32)
    if n_flips == 0:
        nan = np.full(margin.shape, np.nan)
        return margin, nan, nan
    rng = np.random.default_rng(seed)
    null = np.empty((margin.size, n_flips))
    for b0 in range(0, n_flips, _CHUNK):
        size = min(_CHUNK, n_flips - b0)
        G = per_cluster.shape[1]
        # Random bits 8 at a time: drawing 10^4 x 10^4 single ints costs more than the product.
        bits = np.unpackbits(rng.integers(0, 256, size=(size, -(-G // 8)), dtype=np.uint8), 1)
        signs = bits[:, :G].astype(np.float32) * 2 - 1
        null[:, b0 : b0 + size] = flips_matrix @ signs.T
    observed = flips_matrix.sum(1, dtype=np.float32).astype(np.float64)
    return margin, permutation_p(observed, null), westfall_young(observed, null)
