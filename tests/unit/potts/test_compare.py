"""Round-vs-base comparison: the null gives (almost) no significant pairs, a planted motif
carries the largest field shifts, energies and bands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmdiff.core.errors import DataError
from plmdiff.potts import compare
from plmdiff.potts import model as pm
from plmdiff.potts.synthetic import gibbs_sample, planted_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit(states: np.ndarray, bootstrap: int, seed: int) -> pm.FitResult:
    w = pm.sequence_weights(states, 0.8, "cpu")
    result, _ = pm.fit_with_bootstrap(
        states,
        w,
        lambda_h=0.01,
        lambda_j=0.01,
        max_iterations=100,
        bootstrap=bootstrap,
        seed=seed,
        device="cpu",
    )
    return result


def test_two_disjoint_samples_of_one_model_give_few_significant_pairs():
    true, _ = planted_model(12, 12, seed=10, field_scale=0.3, coupling_scale=0.7)
    x = gibbs_sample(true, 1600, sweeps=40, seed=11)
    a, b = fit(x[:800], 20, seed=1), fit(x[800:], 20, seed=2)
    changes = compare.coupling_changes(a, b, fdr=0.05)
    assert len(changes) == 12 * 11 // 2
    assert changes["significant"].mean() <= 0.05, changes.head()
    assert (changes["ci_low"] <= changes["ci_high"]).all()


MOTIF_COLUMNS = [4, 5, 6, 7]


def motif_round(seed: int, *, block: bool) -> tuple[pm.FitResult, pm.FitResult]:
    """Base and a round from one model; the round carries W, C, Y, M at columns 5-8 in 70% of
    its rows: each column on its own (a site preference) or all four together (a block)."""
    true, _ = planted_model(15, 10, seed=seed, field_scale=0.3, coupling_scale=0.5)
    x = gibbs_sample(true, 1200, sweeps=30, seed=seed + 1)
    base, later = x[:600].copy(), x[600:].copy()
    rng = np.random.default_rng(seed + 2)
    motif = pm.encode(["WCYM"])[0]
    if block:
        carriers = rng.random(len(later)) < 0.7
        later[np.ix_(carriers, MOTIF_COLUMNS)] = motif
    else:
        for column, state in zip(MOTIF_COLUMNS, motif, strict=True):
            later[rng.random(len(later)) < 0.7, column] = state
    return fit(base, 2, seed=3), fit(later, 2, seed=4)


def test_a_planted_motif_carries_the_largest_field_shifts():
    base, later = motif_round(12, block=False)
    shifts = compare.field_shifts(base, later)
    top = shifts.sort_values("field_shift", ascending=False)["site"].head(4)
    assert sorted(top) == [c + 1 for c in MOTIF_COLUMNS]
    assert shifts.set_index("site").loc[[5, 6, 7, 8], "top_state"].tolist() == list("WCYM")


def test_a_block_motif_shows_in_the_couplings_between_its_columns():
    # All four residues together: pseudo-likelihood explains them by couplings among the motif
    # columns as much as by their fields, so the coupling changes are where a block shows.
    base, later = motif_round(20, block=True)
    changes = compare.coupling_changes(base, later, fdr=0.05)
    motif = {c + 1 for c in MOTIF_COLUMNS}
    top = changes.sort_values("change", ascending=False).head(6)
    assert all(i in motif and j in motif for i, j in zip(top["site_i"], top["site_j"], strict=True))


def test_fits_over_different_columns_are_refused():
    true, _ = planted_model(5, 2, seed=15)
    small = fit(gibbs_sample(true, 100, sweeps=5, seed=1), 2, seed=0)
    true6, _ = planted_model(6, 2, seed=15)
    other = fit(gibbs_sample(true6, 100, sweeps=5, seed=1), 2, seed=0)
    with pytest.raises(DataError, match="different columns"):
        compare.coupling_changes(small, other, 0.05)


def test_energy_band_fraction():
    reference = np.arange(1000, dtype=float)
    summary = compare.energy_summary(
        {"ref": reference, "shifted": reference + 500}, reference="ref", scorer="base"
    )
    by_set = summary.set_index("set")["fraction_in_band"]
    assert by_set["ref"] == pytest.approx(0.95, abs=0.002)
    assert by_set["shifted"] == pytest.approx(0.475, abs=0.01)
