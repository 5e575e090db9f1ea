"""Potts model numerics: encoding, weights, gauge, couplings, energies, and recovery of a
planted model (CI size; the full-size check is validation/potts_recovery.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from plmdiff.core.errors import DataError
from plmdiff.potts import model as pm
from plmdiff.potts.synthetic import gibbs_sample, planted_model


@pytest.fixture(autouse=True)
def _one_thread():
    # Small tensors: more threads only add contention on shared CI cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_model(length: int, seed: int) -> pm.PottsModel:
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(length, pm.Q))
    J = rng.normal(size=(length, pm.Q, length, pm.Q))
    J = 0.5 * (J + J.transpose(2, 3, 0, 1))
    for i in range(length):
        J[i, :, i, :] = 0.0
    return pm.PottsModel(h=h.astype(np.float32), J=J.astype(np.float32))


def test_encode_decode_round_trip_and_unknown_letters_as_gaps():
    states = pm.encode(["AC-Y", "xWbD"])
    assert states.shape == (2, 4)
    assert pm.decode(states) == ["AC-Y", "-W-D"]
    with pytest.raises(DataError, match="differ in length"):
        pm.encode(["AC", "A"])


def test_weights_count_neighbours_at_the_identity_threshold():
    states = pm.encode(["AAAAAAAAAA", "AAAAAAAAAC", "AAAAAAAACC", "WWWWWWWWWW"])
    w = pm.sequence_weights(states, 0.8, "cpu")
    # rows 0-2 are within 2 of 10 columns of each other (80%), row 3 shares nothing
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(pm.sequence_weights(states, 0.95, "cpu"), [1, 1, 1, 1])


def test_zero_sum_gauge_keeps_energy_differences_and_sums_to_zero():
    model = random_model(4, seed=0)
    gauged = pm.zero_sum_gauge(model)
    np.testing.assert_allclose(gauged.h.sum(1), 0, atol=1e-4)
    np.testing.assert_allclose(gauged.J.sum(1), 0, atol=1e-4)
    np.testing.assert_allclose(gauged.J.sum(3), 0, atol=1e-4)
    x = np.random.default_rng(1).integers(0, pm.Q, size=(20, 4))
    e0, e1 = pm.energies(model, x), pm.energies(gauged, x)
    np.testing.assert_allclose(e0 - e0[0], e1 - e1[0], atol=1e-3)


def test_energies_match_the_definition():
    model = random_model(3, seed=2)
    x = np.array([[1, 5, 0], [20, 3, 7]])
    for row, energy in zip(x, pm.energies(model, x), strict=True):
        expected = -sum(model.h[i, row[i]] for i in range(3)) - sum(
            model.J[i, row[i], j, row[j]] for i, j in itertools.combinations(range(3), 2)
        )
        assert energy == pytest.approx(expected, rel=1e-5)


def test_apc_removes_a_rank_one_background():
    rng = np.random.default_rng(3)
    u = rng.uniform(1, 2, size=8)
    fn = np.outer(u, u)
    np.fill_diagonal(fn, 0)
    # a pure product background has no pair standing out after APC
    assert np.abs(pm.apc(fn)).max() < 0.25 * fn.max()
    fn[2, 5] = fn[5, 2] = fn.max() * 3
    assert pm.top_pairs(pm.apc(fn), 1) == [(2, 5)]


def test_planted_couplings_are_recovered_at_ci_size():
    length, n = 20, 2500
    true, pairs = planted_model(length, length, seed=4, field_scale=0.3, coupling_scale=0.7)
    x = gibbs_sample(true, n, sweeps=60, seed=5)
    w = pm.sequence_weights(x, 0.8, "cpu")
    lh, lj = pm.regularization(length, 0.01, 0.01)
    fit, info = pm.fit_pseudolikelihood(
        x, w, lambda_h=lh, lambda_j=lj, max_iterations=200, device="cpu"
    )
    iu = np.triu_indices(length, 1)
    pearson = np.corrcoef(pm.frobenius(true)[iu], pm.frobenius(fit)[iu])[0, 1]
    top = pm.top_pairs(pm.coupling_scores(fit), length)
    precision = np.mean([p in set(pairs) for p in top])
    assert pearson >= 0.9, pearson
    assert precision >= 0.9, precision
    assert info.iterations > 0


def test_bootstrap_refits_keep_their_shapes():
    true, _ = planted_model(6, 3, seed=6)
    x = gibbs_sample(true, 200, sweeps=20, seed=7)
    w = pm.sequence_weights(x, 0.8, "cpu")
    result, _ = pm.fit_with_bootstrap(
        x, w, lambda_h=0.01, lambda_j=0.01, max_iterations=30, bootstrap=3, seed=0, device="cpu"
    )
    assert result.boot_h.shape == (3, 6, pm.Q) and result.boot_scores.shape == (3, 6, 6)
    assert not np.allclose(result.boot_scores[0], result.boot_scores[1])
