"""Calibration of the probe nulls on null data: rejection rate within 2 SE of alpha.

Each test runs >= 200 independent null data sets in one vectorised call (independent null
layers share one batched solve), so the whole file takes seconds.
"""

from __future__ import annotations

import numpy as np

from plmdiff.config.sections import section_defaults
from plmdiff.probes.inference import margin_test
from plmdiff.probes.probes import ProbeSettings, probe_sweep

ALPHA = 0.05


def within_two_se(rejections: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    rate = float(np.mean(rejections))
    return rate, 2 * np.sqrt(alpha * (1 - alpha) / len(rejections))


def test_probe_permutation_null_is_calibrated_with_clustered_rows():
    """240 null layers: rows come in clusters of 3 near-duplicates that share a round and an
    offset; the grouped probe's cluster-permutation p rejects at rate alpha."""
    rng = np.random.default_rng(0)
    K, clusters, size, d, n_layers = 3, 36, 3, 3, 240
    groups = np.repeat(np.arange(clusters), size)
    y = np.repeat(rng.permutation(np.arange(clusters) % K), size)
    layers = [
        (rng.normal(size=(clusters, d)) * 1.5)[groups] + rng.normal(size=(groups.size, d))
        for _ in range(n_layers)
    ]
    settings = ProbeSettings.from_section(
        {
            **section_defaults("probes"),
            "folds": 3,
            "permutations": 19,
            "C": 1.0,
            "bootstrap": 0,
            "margin_permutations": 0,
        }
    )
    table = probe_sweep(layers, y, groups, settings).accuracy
    rate, bound = within_two_se(table["permutation_p"].to_numpy() <= ALPHA)
    assert abs(rate - ALPHA) <= bound, (rate, bound)


def test_margin_null_is_calibrated():
    """400 layers whose hits are exchangeable with the baseline's within each cluster."""
    rng = np.random.default_rng(1)
    n_layers, clusters, size = 400, 60, 3
    groups = np.repeat(np.arange(clusters), size)
    y = rng.integers(0, 3, groups.size)
    # A cluster is easy or hard for every probe alike; within it, hits are independent.
    easy = rng.uniform(0.3, 0.9, clusters)[groups]
    correct = rng.random((n_layers, groups.size)) < easy
    baseline = rng.random(groups.size) < easy
    rejections = []
    for start in range(0, n_layers, 20):  # a fresh baseline per block: independent nulls
        baseline = rng.random(groups.size) < easy
        _, p, _ = margin_test(correct[start : start + 20], baseline, y, groups, 199, seed=start)
        rejections.append(p <= ALPHA)
    rate, bound = within_two_se(np.concatenate(rejections))
    assert abs(rate - ALPHA) <= bound, (rate, bound)
