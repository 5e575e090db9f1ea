"""Sanity checks of pooled embeddings across rounds, the ones the study planned.

Per layer, on z-scored features (every dimension weighs the same, so a few massive
activations do not decide the answer):

- t-SNE of a stratified subsample, coloured by round;
- cosine similarity between round-mean embeddings (raw, and centred on the mean of the
  round means: raw means of a transformer share one large direction and all look alike), and
  the Euclidean distance between round centroids with a cluster-bootstrap 95% interval
  (bias-corrected: plmdiff.core.stats.bias_corrected_interval);
- inter- vs intra-round variance: the pseudo-F ratio [SS_between / (K-1)] / [SS_within / (n-K)]
  (1 on average when rounds do not differ) with a p-value from permuting whole sequence
  clusters (plmdiff.core.stats.permute_clusters: near-duplicates move together, so they cannot
  make a null too narrow), the same permutations for every layer (family-wise p by the max
  statistic), and a bias-corrected cluster-bootstrap interval;
- step-wise trend: Mantel correlation between |round_i - round_j| and a cross-fitted centroid
  distance (split-half: the product of the two halves' centroid differences estimates the
  squared distance without the noise term that grows with within-round spread and shrinks
  with round size), with a p-value from permuting the rounds. With K <= 7 rounds every order is
  enumerated; an order and its reverse give the same statistic, so the smallest exact p is
  2/K!, and a layer whose floor exceeds `sanity.alpha` is reported untestable.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from plmdiff.config.sections import from_section
from plmdiff.core.errors import ConfigError
from plmdiff.core.runtime import derive_seed
from plmdiff.core.stats import (
    benjamini_hochberg,
    bias_corrected_interval,
    cluster_bootstrap_counts,
    min_permutation_p,
    permutation_p,
    permute_clusters,
    westfall_young,
)
from plmdiff.core.tables import write_table

log = logging.getLogger(__name__)

# Up to this many rounds every permutation of them is enumerated (7! = 5040).
EXACT_MANTEL_MAX_ROUNDS = 7
# Random split halves averaged into the cross-fitted distance (each is unbiased; more of them
# only reduce the split-to-split noise).
CROSS_FIT_SPLITS = 16
# Bootstrap resamples evaluated per batch (bounds memory, not results).
_BOOT_CHUNK = 64


def _layers(value: Any) -> str | tuple[int, ...]:
    return value if isinstance(value, str) else tuple(int(x) for x in value)


@dataclass(frozen=True)
class SanitySettings:
    """The `sanity` section (defaults: config/schema.yaml)."""

    layers: str | tuple[int, ...]
    pooling: str
    tsne_perplexity: float
    tsne_max_points: int
    permutations: int
    bootstrap: int
    alpha: float
    seed: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> SanitySettings:
        return from_section(cls, section, "sanity", convert={"layers": _layers})

    def select_layers(self, stored: Sequence[int], source: str) -> list[int]:
        """The configured layers, each of which must be stored in the pooled files."""
        if self.layers == "all":
            return sorted(stored)
        # The schema allows no other string than "all".
        assert not isinstance(self.layers, str), self.layers
        missing = [layer for layer in self.layers if layer not in set(stored)]
        if missing:
            raise ConfigError(
                f"sanity.layers: layer {missing[0]} is not stored in {source} "
                f"(stored: {', '.join(map(str, sorted(stored)))}); see activations.layers"
            )
        return list(self.layers)


def zscore(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(0)
    sd[sd < 1e-12] = 1.0
    return (X - X.mean(0)) / sd


def stratified_subsample(y: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Row indices (sorted): every round keeps its share of `max_points`, at least one row."""
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.maximum(1, np.floor(counts * max_points / n)).astype(int)
    # Hand out the rounding remainder to the largest fractional parts.
    remainder = max_points - quota.sum()
    if remainder > 0:
        frac = counts * max_points / n - np.floor(counts * max_points / n)
        for i in np.argsort(-frac)[:remainder]:
            quota[i] += 1
    picked = [
        rng.choice(np.flatnonzero(y == k), size=min(q, c), replace=False)
        for k, q, c in zip(classes, quota, counts, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def tsne_2d(X: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """2-D t-SNE of z-scored rows after PCA to <= 50 dimensions (the usual denoising step)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    Z = zscore(X)
    n_components = min(50, Z.shape[0] - 1, Z.shape[1])
    if n_components >= 2 and Z.shape[1] > n_components:
        Z = PCA(n_components=n_components, random_state=seed % 2**32).fit_transform(Z)
    # t-SNE needs perplexity < n; a third of n keeps neighbourhoods meaningful on small sets.
    perplexity = min(perplexity, max(1.0, (Z.shape[0] - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed % 2**32)
    return tsne.fit_transform(Z)


def round_means(X: np.ndarray, y: np.ndarray, n_rounds: int) -> np.ndarray:
    """Mean embedding of each round [K, d] (NaN for a round without rows)."""
    X = np.asarray(X, dtype=np.float64)
    means = np.full((n_rounds, X.shape[1]), np.nan)
    for k in range(n_rounds):
        if (y == k).any():
            means[k] = X[y == k].mean(0)
    return means


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norm > 0, norm, 1.0)
    return unit @ unit.T


def cosine_table(X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Long table: round_i, round_j, cosine of raw means, cosine of centred means."""
    means = round_means(X, y, len(names))
    raw = cosine_matrix(means)
    centred = cosine_matrix(means - np.nanmean(means, axis=0))
    rows = [
        (names[i], names[j], raw[i, j], centred[i, j])
        for i in range(len(names))
        for j in range(len(names))
    ]
    return pd.DataFrame(rows, columns=["round_i", "round_j", "cosine", "cosine_centred"])


# ----------------------------------------------------------------------------- cluster bootstrap


@dataclass(frozen=True)
class _CellSums:
    """Sums of z-scored rows per (cluster, round) cell: what a cluster bootstrap reweights."""

    cluster: np.ndarray  # [P] cluster index of each cell
    round: np.ndarray  # [P] round of each cell
    sums: torch.Tensor  # [P, d]
    rows: torch.Tensor  # [P]
    squares: torch.Tensor  # [P] sum of squared norms
    n_clusters: int


def _cell_sums(Z: np.ndarray, y: np.ndarray, groups: np.ndarray, K: int) -> _CellSums:
    _, codes = np.unique(groups, return_inverse=True)
    cells, inverse = np.unique(codes * K + y, return_inverse=True)
    index = torch.from_numpy(inverse)
    Zt = torch.from_numpy(np.asarray(Z, dtype=np.float64))
    sums = torch.zeros(cells.size, Z.shape[1], dtype=torch.float64).index_add_(0, index, Zt)
    rows = torch.zeros(cells.size, dtype=torch.float64).index_add_(
        0, index, torch.ones(len(y), dtype=torch.float64)
    )
    squares = torch.zeros(cells.size, dtype=torch.float64).index_add_(0, index, Zt.pow(2).sum(1))
    return _CellSums(cells // K, cells % K, sums, rows, squares, int(codes.max()) + 1)


def bootstrap_round_statistics(
    Z: np.ndarray, y: np.ndarray, groups: np.ndarray, K: int, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-bootstrap draws of the variance ratio [B] and centroid distances [B, K, K].

    Each draw reweights whole clusters (drawn with replacement); the statistics are recomputed
    from weighted per-cell sums, so no resampled matrix is ever built. A round absent from a
    draw gives NaN distances in it.
    """
    cells = _cell_sums(Z, y, groups, K)
    _, draws = cluster_bootstrap_counts(
        np.arange(cells.n_clusters), n_boot, np.random.default_rng(seed)
    )
    member = torch.zeros(len(cells.round), K, dtype=torch.float64)
    member[torch.arange(len(cells.round)), torch.from_numpy(cells.round)] = 1.0
    ratios, distances = np.empty(n_boot), np.empty((n_boot, K, K))
    for b0 in range(0, n_boot, _BOOT_CHUNK):
        w = torch.from_numpy(draws[b0 : b0 + _BOOT_CHUNK, cells.cluster]).double()  # [B, P]
        n_k = w @ (member * cells.rows[:, None])  # [B, K]
        s_k = torch.einsum("bp,pk,pd->bkd", w, member, cells.sums)
        n = n_k.sum(1)
        s = s_k.sum(1)
        total = w @ cells.squares - s.pow(2).sum(1) / n
        between = (s_k.pow(2).sum(2) / n_k.clamp_min(1e-30)).sum(1) - s.pow(2).sum(1) / n
        ratios[b0 : b0 + len(w)] = ((between / (K - 1)) / ((total - between) / (n - K))).numpy()
        centroids = s_k / n_k[..., None]
        centroids[n_k == 0] = float("nan")
        distances[b0 : b0 + len(w)] = torch.cdist(centroids, centroids).numpy()
    return ratios, distances


# ----------------------------------------------------------------------------- variance ratio


@dataclass(frozen=True)
class VarianceTest:
    between: float  # SS_between / (K - 1), per dimension
    within: float  # SS_within / (n - K), per dimension
    ratio: float  # between / within (pseudo-F)
    p_value: float
    permutations: int
    null: np.ndarray  # [permutations] ratios under the cluster permutations


def permuted_round_labels(
    y: np.ndarray, groups: np.ndarray, permutations: int, seed: int
) -> np.ndarray:
    """[permutations, n] labels permuted with whole clusters as units (one set for all layers)."""
    rng = np.random.default_rng(derive_seed(seed, "variance"))
    return np.stack([permute_clusters(y, groups, rng) for _ in range(permutations)])


def _between_ss(X: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """SS_between of z-scored (column-mean-zero) X for label sets onehot [B, n, K] -> [B]."""
    sums = torch.einsum("bnk,nd->bkd", onehot, X)
    counts = onehot.sum(1).clamp_min(1.0)
    return (sums.pow(2).sum(-1) / counts).sum(-1)


def variance_ratio_test(
    X: np.ndarray,
    y: np.ndarray,
    permutations: int,
    seed: int,
    *,
    groups: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    batch: int = 64,
) -> VarianceTest:
    """Pseudo-F of rounds on z-scored X, with a cluster-permutation p ((1 + #>=) / (1 + B)).

    groups: sequence cluster per row (default: every row its own cluster); labels: permuted
    label sets [B, n] to use instead of drawing them (shared across layers by sanity_checks).
    """
    # float32: the statistic is compared with itself computed the same way.
    Z = torch.from_numpy(zscore(X).astype(np.float32))
    present, y = np.unique(y, return_inverse=True)
    n, d = Z.shape
    K = int(y.max()) + 1
    if K < 2 or n <= K:
        raise ValueError("the variance ratio needs >= 2 rounds and more sequences than rounds")
    if labels is None:
        groups = np.arange(n) if groups is None else np.asarray(groups)
        labels = permuted_round_labels(y, groups, permutations, seed)
    else:
        labels = np.searchsorted(present, labels)  # the same codes as y (a round may be absent)
    total = float(Z.pow(2).sum())  # column means are zero after z-scoring
    eye = torch.eye(K, dtype=Z.dtype)

    def ratios(sets: np.ndarray) -> torch.Tensor:
        between = _between_ss(Z, eye[torch.from_numpy(sets)])
        return (between / (K - 1)) / ((total - between) / (n - K))

    observed_between = float(_between_ss(Z, eye[torch.from_numpy(y)][None])[0])
    observed = (observed_between / (K - 1)) / ((total - observed_between) / (n - K))
    null = np.concatenate(
        [ratios(labels[b : b + batch]).numpy() for b in range(0, len(labels), batch)]
        or [np.empty(0)]
    ).astype(np.float64)
    # The relative tolerance keeps a permutation equal to the observed labels on the >= side.
    p = float(permutation_p(np.array(observed * (1 - 1e-6)), null))
    return VarianceTest(
        between=observed_between / (K - 1) / d,
        within=(total - observed_between) / (n - K) / d,
        ratio=observed,
        p_value=p,
        permutations=len(labels),
        null=null,
    )


# ----------------------------------------------------------------------------- Mantel trend


@dataclass(frozen=True)
class MantelTest:
    r: float
    p_value: float
    permutations: int  # number of orders compared (K! when exact)
    exact: bool
    min_p: float  # the smallest p this test can give: 2/K! exact, 1/(B+1) sampled
    testable: bool  # min_p <= alpha
    null: np.ndarray  # r of every order compared (identity first when exact)


def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(matrix.shape[0], 1)]


def crossfit_distances(
    Z: np.ndarray, y: np.ndarray, groups: np.ndarray, K: int, seed: int
) -> np.ndarray:
    """Cross-fitted distance between round centroids [K, K] (NaN where a round is too small).

    Clusters are split at random into halves A and B; (c_i^A - c_j^A) . (c_i^B - c_j^B) is an
    unbiased estimate of ||mu_i - mu_j||^2 because the two halves' noise is independent. The
    plain ||c_i - c_j||^2 adds tr(Sigma_i)/n_i + tr(Sigma_j)/n_j, which would make a round with
    more spread or fewer sequences look farther from the others. Averaged over
    CROSS_FIT_SPLITS splits; reported as sign(D) sqrt(|D|), a distance in the data's units.
    """
    Z = np.asarray(Z, dtype=np.float64)
    _, codes = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(derive_seed(seed, "crossfit"))
    total, used = np.zeros((K, K)), np.zeros((K, K))
    for _ in range(CROSS_FIT_SPLITS):
        half = rng.integers(0, 2, size=int(codes.max()) + 1)[codes]
        a, b = (
            round_means(Z[half == 0], y[half == 0], K),
            round_means(Z[half == 1], y[half == 1], K),
        )
        estimate = np.einsum("ijd,ijd->ij", a[:, None] - a[None], b[:, None] - b[None])
        ok = ~np.isnan(estimate)
        total[ok] += estimate[ok]
        used += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        squared = np.where(used > 0, total / np.maximum(used, 1), np.nan)
    np.fill_diagonal(squared, 0.0)
    return np.sign(squared) * np.sqrt(np.abs(squared))


def mantel_trend_test(
    distances: np.ndarray,
    permutations: int,
    seed: int,
    *,
    positions: np.ndarray | None = None,
    alpha: float = 0.05,
    exact_max: int = EXACT_MANTEL_MAX_ROUNDS,
) -> MantelTest:
    """Pearson r between |i - j| and distances[i, j], p from permuting round order (one-sided).

    A positive r means rounds closer in time have closer centroids. The null permutes which
    centroid belongs to which round. For K <= exact_max all K! orders are enumerated: the p is
    exact, and since an order and its reverse give the same r its floor is 2/K! (0.083 for 4
    rounds, 0.0028 for 6). positions: the round index of each row of `distances` (default
    0..K-1), for when a round has no sequences.
    """
    K = distances.shape[0]
    if K < 3:
        nan = float("nan")
        return MantelTest(nan, nan, 0, True, nan, False, np.array([]))
    positions = np.arange(K) if positions is None else np.asarray(positions)
    lag = np.abs(np.subtract.outer(positions, positions)).astype(float)
    x = _upper(lag)
    x = (x - x.mean()) / x.std()

    def r_of(order: np.ndarray) -> float:
        v = _upper(distances[np.ix_(order, order)])
        sd = v.std()
        return float(((v - v.mean()) / sd * x).mean()) if sd > 0 else 0.0

    observed = r_of(np.arange(K))
    if exact_max >= K:
        orders = [np.array(p) for p in itertools.permutations(range(K))]  # identity first
        null = np.array([r_of(o) for o in orders])
        p = float((null >= observed - 1e-12).mean())  # includes the identity order
        floor = 2.0 / math.factorial(K)
        return MantelTest(observed, p, math.factorial(K), True, floor, floor <= alpha, null)
    rng = np.random.default_rng(derive_seed(seed, "mantel"))
    null = np.array([r_of(rng.permutation(K)) for _ in range(permutations)])
    p = float(permutation_p(np.array(observed), null))
    floor = min_permutation_p(permutations)
    return MantelTest(observed, p, permutations, False, floor, floor <= alpha, null)


def _mantel_fwer(tests: Sequence[MantelTest]) -> np.ndarray:
    """Max-statistic adjusted p across layers whose tests compared the same orders."""
    usable = [t for t in tests if t.null.size]
    if not usable or len({t.null.size for t in usable}) > 1 or len(usable) < len(tests):
        return np.full(len(tests), np.nan)
    observed = np.array([t.r for t in tests])
    null = np.stack([t.null for t in tests])
    if tests[0].exact:
        # Enumerated orders include the identity: p = share of orders, no +1.
        maxima = null.max(0)
        return (maxima[None] >= observed[:, None] - 1e-12).mean(1)
    return westfall_young(observed, null)


# ----------------------------------------------------------------------------- all layers


@dataclass
class SanityResult:
    variance: pd.DataFrame  # layer, variance ratio, interval, p-values, cluster_method
    trend: pd.DataFrame  # layer, mantel_r, p-values, min_p, testable, cluster_method
    cosine: pd.DataFrame  # layer, round_i, round_j, cosines, distances and their interval
    tsne: dict[int, np.ndarray]  # layer -> [m, 2]
    tsne_rows: np.ndarray  # rows of the subsample (same for every layer)


def _distance_rows(
    layer: int,
    X: np.ndarray,
    Z: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    boot: np.ndarray,
    crossfit: np.ndarray,
) -> pd.DataFrame:
    """The cosine table of one layer with centroid distances (plain, interval, cross-fitted)."""
    K = len(names)
    means = round_means(Z, y, K)
    plain = np.linalg.norm(means[:, None] - means[None], axis=-1)
    low, high = bias_corrected_interval(np.moveaxis(boot, 0, -1), plain)
    table = cosine_table(X, y, names)
    i, j = np.divmod(np.arange(K * K), K)
    table["distance"] = plain[i, j]
    table["distance_ci_low"] = low[i, j]
    table["distance_ci_high"] = high[i, j]
    table["distance_crossfit"] = crossfit[i, j]
    table.insert(0, "layer", layer)
    return table


def sanity_checks(
    X_layers: Mapping[int, np.ndarray],
    y: np.ndarray,
    round_names: Sequence[str],
    settings: SanitySettings,
    *,
    groups: np.ndarray | None = None,
    cluster_method: str = "none",
    tsne: bool = True,
) -> SanityResult:
    """Every check for every layer of X_layers (layer -> float [n, d]).

    groups: sequence cluster per row (default: each row its own), the unit of permutations,
    split halves and bootstrap; cluster_method: how they were made, recorded in every table.
    """
    y = np.asarray(y)
    K = len(round_names)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    rows = stratified_subsample(y, settings.tsne_max_points, derive_seed(settings.seed, "tsne"))
    labels = permuted_round_labels(y, groups, settings.permutations, settings.seed)
    variance, cosine, maps, trends, boots = [], [], {}, [], []
    for layer, X in X_layers.items():
        Z = zscore(X)
        v = variance_ratio_test(Z, y, settings.permutations, settings.seed, labels=labels)
        ratios, distances = (
            bootstrap_round_statistics(
                Z, y, groups, K, settings.bootstrap, derive_seed(settings.seed, "bootstrap")
            )
            if settings.bootstrap
            else (np.full(1, np.nan), np.full((1, K, K), np.nan))
        )
        low, high = bias_corrected_interval(ratios, v.ratio)
        variance.append(
            {
                "layer": layer,
                "between_variance": v.between,
                "within_variance": v.within,
                "variance_ratio": v.ratio,
                "variance_ratio_ci_low": float(low),
                "variance_ratio_ci_high": float(high),
                "permutation_p": v.p_value,
                "permutations": v.permutations,
                "min_p": min_permutation_p(v.permutations),
            }
        )
        boots.append(v.null)
        crossfit = crossfit_distances(Z, y, groups, K, settings.seed)
        present = np.flatnonzero(~np.isnan(crossfit).all(1) & (np.bincount(y, minlength=K) > 0))
        m = mantel_trend_test(
            crossfit[np.ix_(present, present)],
            settings.permutations,
            settings.seed,  # the same orders for every layer: the family-wise p needs them
            positions=present,
            alpha=settings.alpha,
        )
        trends.append(m)
        cosine.append(_distance_rows(layer, X, Z, y, round_names, distances, crossfit))
        if tsne:
            maps[layer] = tsne_2d(X[rows], settings.tsne_perplexity, settings.seed)
        log.info(
            "layer %d: variance ratio %.3f (p %.3g), Mantel r %.3f (p %.3g, floor %.3g%s)",
            layer,
            v.ratio,
            v.p_value,
            m.r,
            m.p_value,
            m.min_p,
            "" if m.testable else f", untestable at alpha {settings.alpha}",
        )
    variance_table = pd.DataFrame(variance)
    variance_table.insert(
        variance_table.columns.get_loc("permutation_p") + 1,
        "permutation_p_fwer",
        westfall_young(variance_table["variance_ratio"].to_numpy(float), np.stack(boots)),
    )
    trend_table = pd.DataFrame(
        {
            "layer": list(X_layers),
            "mantel_r": [t.r for t in trends],
            "permutation_p": [t.p_value for t in trends],
            "permutation_p_fwer": _mantel_fwer(trends),
            "min_p": [t.min_p for t in trends],
            "testable": [t.testable for t in trends],
            "alpha": settings.alpha,
            "permutations": [t.permutations for t in trends],
            "exact": [t.exact for t in trends],
        }
    )
    # Benjamini-Hochberg across layers, per test, kept beside the family-wise p.
    for table in (variance_table, trend_table):
        table.insert(
            table.columns.get_loc("permutation_p_fwer") + 1,
            "permutation_q",
            benjamini_hochberg(table["permutation_p"].to_numpy(dtype=float)),
        )
        table["n_clusters"] = np.unique(groups).size
        table["cluster_method"] = cluster_method
    return SanityResult(
        variance=variance_table,
        trend=trend_table,
        cosine=pd.concat(cosine, ignore_index=True),
        tsne=maps,
        tsne_rows=rows,
    )


def write_sanity_tables(
    result: SanityResult,
    variance: str | os.PathLike,
    trend: str | os.PathLike,
    cosine: str | os.PathLike,
) -> None:
    """TSV outputs, each written atomically."""
    for frame, path in (
        (result.variance, variance),
        (result.trend, trend),
        (result.cosine, cosine),
    ):
        write_table(frame, path)
