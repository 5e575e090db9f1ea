"""Sanity checks of pooled embeddings across rounds, the ones the study planned.

Per layer, on z-scored features (every dimension weighs the same, so a few massive
activations do not decide the answer):

- t-SNE of a stratified subsample, coloured by round;
- cosine similarity between round-mean embeddings (raw, and centred on the mean of the
  round means: raw means of a transformer share one large direction and all look alike);
- inter- vs intra-round variance: the pseudo-F ratio [SS_between / (K-1)] / [SS_within / (n-K)]
  (1 on average when rounds do not differ) with a label-permutation p-value;
- step-wise trend: Mantel correlation between |round_i - round_j| and the distance between
  round centroids, with a p-value from permuting the rounds (all K! orders when K <= 7, so
  the p-value is exact; note its floor of 1/K! for few rounds).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from plmdiff.core.errors import ConfigError
from plmdiff.core.runtime import atomic_path, derive_seed
from plmdiff.core.stats import benjamini_hochberg

log = logging.getLogger(__name__)

# Up to this many rounds every permutation of them is enumerated (7! = 5040).
EXACT_MANTEL_MAX_ROUNDS = 7


@dataclass(frozen=True)
class SanitySettings:
    layers: str | tuple[int, ...] = "all"
    pooling: str = "last"
    tsne_perplexity: float = 30.0
    tsne_max_points: int = 2000
    permutations: int = 999
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> SanitySettings:
        layers = section.get("layers", "all")
        return cls(
            layers=layers if isinstance(layers, str) else tuple(int(x) for x in layers),
            pooling=str(section.get("pooling", cls.pooling)),
            tsne_perplexity=float(section.get("tsne_perplexity", cls.tsne_perplexity)),
            tsne_max_points=int(section.get("tsne_max_points", cls.tsne_max_points)),
            permutations=int(section.get("permutations", cls.permutations)),
            seed=int(section.get("seed", cls.seed)),
        )

    def select_layers(self, stored: Sequence[int], source: str) -> list[int]:
        """The configured layers, each of which must be stored in the pooled files."""
        if self.layers == "all":
            return sorted(stored)
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


# ----------------------------------------------------------------------------- variance ratio


@dataclass(frozen=True)
class VarianceTest:
    between: float  # SS_between / (K - 1), per dimension
    within: float  # SS_within / (n - K), per dimension
    ratio: float  # between / within (pseudo-F)
    p_value: float
    permutations: int


def _between_ss(X: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """SS_between of z-scored (column-mean-zero) X for label sets onehot [B, n, K] -> [B]."""
    sums = torch.einsum("bnk,nd->bkd", onehot, X)
    counts = onehot.sum(1).clamp_min(1.0)
    return (sums.pow(2).sum(-1) / counts).sum(-1)


def variance_ratio_test(
    X: np.ndarray, y: np.ndarray, permutations: int, seed: int, *, batch: int = 64
) -> VarianceTest:
    """Pseudo-F of rounds on z-scored X, with a permutation p-value ((1 + #>=) / (1 + B))."""
    # float32: the statistic is compared with itself computed the same way.
    Z = torch.from_numpy(zscore(X).astype(np.float32))
    _, y = np.unique(y, return_inverse=True)
    n, d = Z.shape
    K = int(y.max()) + 1
    if K < 2 or n <= K:
        raise ValueError("the variance ratio needs >= 2 rounds and more sequences than rounds")
    total = float(Z.pow(2).sum())  # column means are zero after z-scoring
    eye = torch.eye(K, dtype=Z.dtype)

    def ratios(labels: np.ndarray) -> torch.Tensor:
        onehot = eye[torch.from_numpy(labels)]  # [B, n, K]
        between = _between_ss(Z, onehot)
        return (between / (K - 1)) / ((total - between) / (n - K))

    observed_between = float(_between_ss(Z, eye[torch.from_numpy(y)][None])[0])
    observed = (observed_between / (K - 1)) / ((total - observed_between) / (n - K))
    rng = np.random.default_rng(derive_seed(seed, "variance"))
    exceed = 0
    for start in range(0, permutations, batch):
        size = min(batch, permutations - start)
        labels = np.stack([rng.permutation(y) for _ in range(size)])
        exceed += int((ratios(labels) >= observed * (1 - 1e-12)).sum())
    return VarianceTest(
        between=observed_between / (K - 1) / d,
        within=(total - observed_between) / (n - K) / d,
        ratio=observed,
        p_value=(1 + exceed) / (1 + permutations),
        permutations=permutations,
    )


# ----------------------------------------------------------------------------- Mantel trend


@dataclass(frozen=True)
class MantelTest:
    r: float
    p_value: float
    permutations: int  # number of orders compared (K! when exact)
    exact: bool


def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(matrix.shape[0], 1)]


def mantel_trend_test(
    centroids: np.ndarray,
    permutations: int,
    seed: int,
    *,
    positions: np.ndarray | None = None,
    exact_max: int = EXACT_MANTEL_MAX_ROUNDS,
) -> MantelTest:
    """Pearson r between |i - j| and ||c_i - c_j||, p from permuting round order (one-sided).

    A positive r means rounds closer in time have closer centroids. The null permutes which
    centroid belongs to which round; with K rounds there are only K! orders, so for small K
    all are enumerated (exact p, floor 1/K!). positions: the round index of each centroid
    (default 0..K-1), for when a round has no sequences.
    """
    K = centroids.shape[0]
    if K < 3:
        return MantelTest(float("nan"), float("nan"), 0, True)
    positions = np.arange(K) if positions is None else np.asarray(positions)
    dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    lag = np.abs(np.subtract.outer(positions, positions)).astype(float)
    x = _upper(lag)
    x = (x - x.mean()) / x.std()

    def r_of(order: np.ndarray) -> float:
        v = _upper(dist[np.ix_(order, order)])
        sd = v.std()
        return float(((v - v.mean()) / sd * x).mean()) if sd > 0 else 0.0

    observed = r_of(np.arange(K))
    if exact_max >= K:
        orders = [np.array(p) for p in itertools.permutations(range(K))]
        null = np.array([r_of(o) for o in orders])
        p = float((null >= observed - 1e-12).mean())  # includes the identity order
        return MantelTest(observed, p, math.factorial(K), True)
    rng = np.random.default_rng(derive_seed(seed, "mantel"))
    null = np.array([r_of(rng.permutation(K)) for _ in range(permutations)])
    p = (1 + int((null >= observed - 1e-12).sum())) / (1 + permutations)
    return MantelTest(observed, p, permutations, False)


# ----------------------------------------------------------------------------- all layers


@dataclass
class SanityResult:
    variance: pd.DataFrame  # layer, between_variance, within_variance, variance_ratio, ...
    trend: pd.DataFrame  # layer, mantel_r, permutation_p, permutation_q, permutations, exact
    cosine: pd.DataFrame  # layer, round_i, round_j, cosine, cosine_centred
    tsne: dict[int, np.ndarray]  # layer -> [m, 2]
    tsne_rows: np.ndarray  # rows of the subsample (same for every layer)


def sanity_checks(
    X_layers: Mapping[int, np.ndarray],
    y: np.ndarray,
    round_names: Sequence[str],
    settings: SanitySettings,
    *,
    tsne: bool = True,
) -> SanityResult:
    """Every check for every layer of X_layers (layer -> float [n, d])."""
    y = np.asarray(y)
    rows = stratified_subsample(y, settings.tsne_max_points, derive_seed(settings.seed, "tsne"))
    variance, trend, cosine, maps = [], [], [], {}
    for layer, X in X_layers.items():
        Z = zscore(X)
        v = variance_ratio_test(Z, y, settings.permutations, derive_seed(settings.seed, layer))
        variance.append(
            {
                "layer": layer,
                "between_variance": v.between,
                "within_variance": v.within,
                "variance_ratio": v.ratio,
                "permutation_p": v.p_value,
                "permutations": v.permutations,
            }
        )
        means = round_means(Z, y, len(round_names))
        present = np.flatnonzero(~np.isnan(means).any(1))
        m = mantel_trend_test(
            means[present],
            settings.permutations,
            derive_seed(settings.seed, layer),
            positions=present,
        )
        trend.append(
            {
                "layer": layer,
                "mantel_r": m.r,
                "permutation_p": m.p_value,
                "permutations": m.permutations,
                "exact": m.exact,
            }
        )
        cos = cosine_table(X, y, round_names)
        cos.insert(0, "layer", layer)
        cosine.append(cos)
        if tsne:
            maps[layer] = tsne_2d(X[rows], settings.tsne_perplexity, settings.seed)
        log.info(
            "layer %d: variance ratio %.3f (p %.3g), Mantel r %.3f (p %.3g)",
            layer,
            v.ratio,
            v.p_value,
            m.r,
            m.p_value,
        )
    variance_table, trend_table = pd.DataFrame(variance), pd.DataFrame(trend)
    # Benjamini-Hochberg across layers, per test: each layer is a test of its own.
    for table in (variance_table, trend_table):
        table.insert(
            table.columns.get_loc("permutation_p") + 1,
            "permutation_q",
            benjamini_hochberg(table["permutation_p"].to_numpy(dtype=float)),
        )
    return SanityResult(
        variance=variance_table,
        trend=trend_table,
        cosine=pd.concat(cosine, ignore_index=True),
        tsne=maps,
        tsne_rows=rows,
    )


def write_sanity_tables(result: SanityResult, variance: str, trend: str, cosine: str) -> None:
    """TSV outputs, each written atomically."""
    for frame, path in (
        (result.variance, variance),
        (result.trend, trend),
        (result.cosine, cosine),
    ):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
