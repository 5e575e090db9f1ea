"""plmdiff.diff.evidence against scipy/statsmodels references and on features with a known change."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from plmdiff.diff.evidence import (
    PosteriorFoldChange,
    call_by_evidence,
    clopper_pearson,
    direction_cut,
    evidence_order,
    false_discovery_proportion,
    fires_in_both,
    gamma_log_moments,
    min_count_mask,
    null_threshold,
    posterior_log2_fold_change,
    ranks_from_order,
    sign_agreement,
)


@pytest.mark.parametrize(("shape", "rate"), [(0.7, 2.0), (3.0, 0.5), (120.0, 1e4)])
def test_gamma_log_moments_match_numerical_expectation(shape, rate):
    dist = sps.gamma(shape, scale=1 / rate)
    mean, var = gamma_log_moments(np.array([shape]), np.array([rate]))
    ref_mean = dist.expect(np.log)
    ref_var = dist.expect(lambda x: (np.log(x) - ref_mean) ** 2)
    assert mean[0] == pytest.approx(ref_mean, rel=1e-6, abs=1e-8)
    assert var[0] == pytest.approx(ref_var, rel=1e-5)


def test_posterior_fold_change_matches_monte_carlo_of_its_gamma_posteriors():
    rng = np.random.default_rng(0)
    ca, cb, ta, tb, prior = np.array([4.0]), np.array([30.0]), 5000.0, 4000.0, 2.0
    post = posterior_log2_fold_change(ca, ta, cb, tb, prior)
    pooled = (ca + cb) / (ta + tb)
    rate_a = sps.gamma(prior + ca, scale=1 / (prior / pooled + ta)).rvs(200_000, random_state=rng)
    rate_b = sps.gamma(prior + cb, scale=1 / (prior / pooled + tb)).rvs(200_000, random_state=rng)
    draws = np.log2(rate_b / rate_a)
    assert post.mean[0] == pytest.approx(draws.mean(), abs=0.01)
    assert post.sd[0] == pytest.approx(draws.std(), rel=0.01)


def test_rare_features_shrink_frequent_ones_keep_their_fold_change():
    """The same 4x rise: on 3 -> 12 firings it is mostly prior, on 300 -> 1200 it is data."""
    post = posterior_log2_fold_change(
        np.array([3.0, 300.0]), 10_000, np.array([12.0, 1200.0]), 10_000, prior_count=5.0
    )
    raw = np.log2(4.0)
    assert post.mean[0] < 0.7 * raw
    assert post.mean[1] == pytest.approx(raw, abs=0.05)
    assert post.lower_abs()[0] < post.lower_abs()[1]


def test_no_change_and_never_firing_features_sit_at_zero():
    post = posterior_log2_fold_change(
        np.array([0.0, 50.0]), 1000, np.array([0.0, 50.0]), 1000, prior_count=1.0
    )
    assert post.mean == pytest.approx([0.0, 0.0], abs=1e-12)
    assert np.all(post.lower_abs() == 0) and np.all(np.isfinite(post.sd))


def test_posterior_rejects_bad_inputs():
    with pytest.raises(ValueError, match="prior_count"):
        posterior_log2_fold_change(np.ones(1), 1, np.ones(1), 1, 0)
    with pytest.raises(ValueError, match="token counts"):
        posterior_log2_fold_change(np.ones(1), 0, np.ones(1), 1, 1)


def test_sign_agreement_and_min_count():
    rho = np.array([0.3, 0.3, -0.2, 0.0, np.nan])
    lfc = np.array([0.5, -0.5, -1.0, 1.0, 1.0])
    assert sign_agreement(rho, lfc).tolist() == [True, False, True, False, False]
    assert min_count_mask(np.array([1, 4]), np.array([2, 2]), 5).tolist() == [False, True]
    assert fires_in_both(np.array([0, 3, 2]), np.array([5, 0, 2])).tolist() == [False, False, True]


def test_known_change_is_called_and_ranked_first_among_noise():
    """Synthetic features: one moderate real rise on a frequent feature (log2 0.6, not passing
    today's cut of 1), and rare features with large chance fold changes. The evidence call finds
    the real one and ranks it first; the raw |log2FC| ranking puts the rare ones above it."""
    rng = np.random.default_rng(1)
    n_tok = 20_000
    rates_a = np.r_[0.05, np.full(40, 2e-4)]
    rates_b = rates_a.copy()
    rates_b[0] *= 2**0.6
    ca, cb = rng.poisson(rates_a * n_tok), rng.poisson(rates_b * n_tok)
    raw = np.log2((cb + 1) / (ca + 1))
    post = posterior_log2_fold_change(ca, n_tok, cb, n_tok, prior_count=5.0)
    q = np.r_[1e-6, np.full(40, 0.5)]
    rho = np.r_[0.2, rng.normal(0, 0.05, 40)]
    called = call_by_evidence(q, rho, post, fdr=0.05, min_abs_log2_fold_change=0.0)
    assert called.tolist() == [True] + [False] * 40
    ranks = ranks_from_order(evidence_order(called, called, q, np.ones(41), post.mean))
    assert ranks[0] == 1
    assert np.argsort(-np.abs(raw))[0] != 0  # the old ranking does not put it first


def test_call_by_evidence_requires_effect_and_agreement():
    post = PosteriorFoldChange(
        mean=np.array([1.5, 1.5, 0.2, 1.5]), sd=np.array([0.1, 0.1, 0.1, 1.0])
    )
    q = np.array([0.01, 0.01, 0.01, 0.01])
    rho = np.array([0.2, -0.2, 0.2, 0.2])
    called = call_by_evidence(q, rho, post, fdr=0.05, min_abs_log2_fold_change=1.0)
    assert called.tolist() == [True, False, False, False]
    assert not call_by_evidence(
        np.array([np.nan]), rho[:1], post, fdr=0.05, min_abs_log2_fold_change=0
    )[0]


def test_evidence_order_groups_then_caps_q_then_effect():
    called = np.array([False, True, True, True, True])
    replicated = np.array([False, False, True, True, True])
    q = np.array([1e-30, 1e-30, 1e-3, 1e-120, 1e-90])
    rep = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    effect = np.array([9.0, 9.0, 0.5, 0.4, 2.0])
    order = evidence_order(called, replicated, q, rep, effect, max_log10=50)
    # 3 and 4 both hit the cap: the larger effect (4) first; then 2; then the unreplicated 1.
    assert order.tolist() == [4, 3, 2, 1, 0]
    assert ranks_from_order(order).tolist() == [5, 4, 3, 2, 1]


def test_direction_cut_is_the_null_quantile_never_below_the_floor():
    null = np.random.default_rng(3).gamma(2.0, 0.001, 4000)
    quantile = float(np.quantile(null, 0.999, method="higher"))
    assert direction_cut(null, 0.999, 0.0) == pytest.approx(quantile)
    assert direction_cut(null, 0.999, 0.5) == 0.5
    assert direction_cut(None, 0.999, 0.1) == 0.1
    assert direction_cut(np.array([np.nan]), 0.999, 0.1) == 0.1


def test_null_threshold_is_the_upper_quantile_and_holds_the_rate():
    rng = np.random.default_rng(2)
    null = rng.gamma(2.0, 0.02, 5000)
    cut = null_threshold(np.r_[null, np.nan], 0.01)
    assert cut == np.quantile(null, 0.99, method="higher")
    assert (null > cut).mean() <= 0.01
    fresh = rng.gamma(2.0, 0.02, 20000)
    assert (fresh > cut).mean() == pytest.approx(0.01, abs=0.004)
    with pytest.raises(ValueError, match="alpha"):
        null_threshold(null, 1.5)
    with pytest.raises(ValueError, match="non-NaN"):
        null_threshold(np.array([np.nan]), 0.05)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 12), (12, 12)])
def test_clopper_pearson_matches_statsmodels(k, n):
    ref = proportion_confint(k, n, alpha=0.05, method="beta")
    assert clopper_pearson(k, n) == pytest.approx(ref, abs=1e-10)


def test_false_discovery_proportion():
    assert false_discovery_proportion(np.array([False, False]), np.array([False, False])) == 0.0
    called = np.array([True, True, True, False])
    truth = np.array([True, False, False, True])
    assert false_discovery_proportion(called, truth) == pytest.approx(2 / 3)


def test_gamma_log_moments_variance_integrates():
    """trigamma(a) is the variance of ln X: check by direct quadrature of the log-gamma density."""
    a = 2.5
    norm = integrate.quad(lambda y: np.exp(a * y - np.exp(y)), -40, 10)[0]
    mean = integrate.quad(lambda y: y * np.exp(a * y - np.exp(y)), -40, 10)[0] / norm
    var = integrate.quad(lambda y: (y - mean) ** 2 * np.exp(a * y - np.exp(y)), -40, 10)[0] / norm
    m, v = gamma_log_moments(np.array([a]), np.array([1.0]))
    assert m[0] == pytest.approx(mean, rel=1e-7) and v[0] == pytest.approx(var, rel=1e-7)
