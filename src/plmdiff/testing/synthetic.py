"""Synthetic pooled embeddings with a known round signal, for tests and benchmarks.

They imitate what makes real transformer embeddings awkward for a probe: a few large shared
directions (anisotropy), a few dimensions with a large offset (massive activations), structure
that persists from layer to layer (the residual stream), and near-duplicate sequences that
share a cluster (mode collapse). The round signal of each layer is planted with a known size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlantedEmbeddings:
    X: np.ndarray  # float32 [L, n, d]
    y: np.ndarray  # int [n] round index
    groups: np.ndarray  # int [n] cluster of near-duplicates


def planted_embeddings(
    n_per_class: int | Sequence[int],
    n_classes: int,
    d: int,
    signal: Sequence[float],
    *,
    trend: bool = False,
    cluster_size: int = 1,
    cluster_spread: float = 0.0,
    rank: int = 16,
    seed: int = 0,
) -> PlantedEmbeddings:
    """Embeddings for len(signal) layers whose round means differ by `signal[l]` noise units.

    trend: rounds sit on a line (round k's mean is k steps along one direction), so centroids
    of rounds closer in time are closer in space; otherwise the means are random directions.
    cluster_size > 1: consecutive sequences of a round form clusters that share an offset of
    `cluster_spread` noise units (near-duplicates); each cluster holds one round.
    """
    rng = np.random.default_rng(seed)
    counts = [n_per_class] * n_classes if isinstance(n_per_class, int) else list(n_per_class)
    if len(counts) != n_classes:
        raise ValueError(f"n_per_class has {len(counts)} entries, expected {n_classes}")
    y = np.repeat(np.arange(n_classes), counts)
    n = y.size
    groups = np.concatenate(
        [np.arange(c) // cluster_size + 1_000_000 * k for k, c in enumerate(counts)]
    )
    _, groups = np.unique(groups, return_inverse=True)

    shared = rng.normal(size=(rank, d)) * 3.0 / np.sqrt(rank)  # anisotropic directions
    # Power-law spectrum of the rest (eigenvalue k ~ 1/k), as in learned representations.
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    bulk = (
        rotation
        * (np.arange(1, d + 1) ** -0.5 * np.sqrt(d / np.sum(1 / np.arange(1, d + 1))))[:, None]
    )
    offset = np.zeros(d)
    offset[: max(1, d // 256)] = 40.0  # massive activations
    latent = rng.normal(size=(n, rank))  # what a sequence keeps through the residual stream
    cluster_offset = rng.normal(size=(groups.max() + 1, d)) * cluster_spread
    if trend:
        axis = rng.normal(size=d)
        axis /= np.linalg.norm(axis)
        steps = np.arange(n_classes) - (n_classes - 1) / 2
        direction = steps[:, None] * axis[None, :]
        direction /= np.abs(steps).max() or 1.0
    else:
        direction = rng.normal(size=(n_classes, d))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)

    layers = []
    for strength in signal:
        # Each layer turns the latent a little and keeps its scale.
        drift = np.eye(rank) + rng.normal(size=(rank, rank)) * 0.3 / np.sqrt(rank)
        latent = latent @ drift / np.sqrt(1.09)
        noise = rng.normal(size=(n, d)) @ bulk
        # Class means at distance `strength` (in noise standard deviations) from the origin.
        means = direction * strength * np.sqrt(d) / 4
        x = latent @ shared + noise + means[y] + cluster_offset[groups] + offset
        layers.append(x.astype(np.float32))
    return PlantedEmbeddings(np.stack(layers), y, groups)
