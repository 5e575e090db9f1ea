"""Statistics that decide which features changed, beyond a raw fold change (pure functions).

The diff's call today is `q <= fdr and |log2 fold change| >= 1`, ranked by |log2 fold change|.
Both parts favour rare features: a feature firing on 3 tokens in the base and 12 in the last
round has a log2 fold change of 2 by chance, while a feature that fires on thousands of tokens
and rises by 60% (log2 0.7) is never called. The functions here replace the raw fold change by a
posterior one and the fold-change ranking by an evidence ranking (VALIDATION.md measures both
on studies with a known answer):

- `posterior_log2_fold_change`: gamma-Poisson posterior of each model's firing rate, with a
  prior centred on the feature's pooled rate whose weight is `prior_count` tokens' worth of
  firings. Rare features shrink to 0, frequent ones keep their fold change; the posterior sd
  gives a lower credible bound of |log2 fold change| (what a call can require).
- `sign_agreement`: the sequence-level trend and the last-vs-base fold change point the same way
  (a feature that rises over rounds but ends lower than the base is not an "up" change).
- `evidence_order`: called-and-replicated features first, then by the strength of evidence
  (-log10 q, capped) weighted by change replication, the shrunk effect breaking ties.
- `null_threshold` and `fires_in_both`: a direction-change cut calibrated on a null fine-tune
  (the same fine-tuning budget on held-out base tokens) instead of a fixed 0.1, applied only to
  features that fire in both models.
- `clopper_pearson` / `false_discovery_proportion`: what the null studies' realised error is,
  with its exact binomial interval over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special as spf
from scipy import stats as sps

LN2 = float(np.log(2.0))
# Two-sided 95% credible interval of a normal approximation to the posterior log2 fold change.
CREDIBLE_Z = 1.96


@dataclass(frozen=True)
class PosteriorFoldChange:
    """Posterior of log2(rate_b / rate_a) per feature (independent gamma posteriors)."""

    mean: np.ndarray
    sd: np.ndarray

    def lower_abs(self, z: float = CREDIBLE_Z) -> np.ndarray:
        """Lower credible bound of |log2 fold change| (0 where the interval straddles 0)."""
        return np.maximum(np.abs(self.mean) - z * self.sd, 0.0)


def gamma_log_moments(shape: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ln(X) for X ~ Gamma(shape, rate): digamma(a) - ln(b), trigamma(a)."""
    shape = np.asarray(shape, dtype=float)
    return spf.digamma(shape) - np.log(np.asarray(rate, dtype=float)), spf.polygamma(1, shape)


def posterior_log2_fold_change(
    count_a: np.ndarray,
    tokens_a: float,
    count_b: np.ndarray,
    tokens_b: float,
    prior_count: float,
) -> PosteriorFoldChange:
    """Empirical-Bayes log2 fold change of firing rate, model b over model a.

    Counts are Poisson(tokens x rate). Each feature's rate has the prior Gamma(prior_count,
    prior_count / pooled rate), the pooled rate being (count_a + count_b) / (tokens_a + tokens_b):
    the prior says "no change" with the weight of `prior_count` firings. A feature's posterior is
    Gamma(prior_count + count, prior_count / pooled + tokens) per model, and log2 fold change's
    posterior mean and sd follow from `gamma_log_moments`. Features that never fire get 0 +- the
    prior's spread.
    """
    if prior_count <= 0:
        raise ValueError(f"prior_count must be > 0, got {prior_count}")
    if tokens_a <= 0 or tokens_b <= 0:
        raise ValueError(f"token counts must be > 0, got {tokens_a} and {tokens_b}")
    ca = np.asarray(count_a, dtype=float)
    cb = np.asarray(count_b, dtype=float)
    # A feature that fires nowhere takes half a firing as its pooled count, so its prior rate
    # stays finite and its posterior is the (symmetric) prior.
    pooled = np.maximum(ca + cb, 0.5) / (tokens_a + tokens_b)
    prior_rate = prior_count / pooled
    mean_a, var_a = gamma_log_moments(prior_count + ca, prior_rate + tokens_a)
    mean_b, var_b = gamma_log_moments(prior_count + cb, prior_rate + tokens_b)
    return PosteriorFoldChange(mean=(mean_b - mean_a) / LN2, sd=np.sqrt(var_a + var_b) / LN2)


def min_count_mask(count_a: np.ndarray, count_b: np.ndarray, min_count: int) -> np.ndarray:
    """Features with at least `min_count` firings in base and last round together."""
    return (np.asarray(count_a) + np.asarray(count_b)) >= min_count


def sign_agreement(rho: np.ndarray, log2_fold_change: np.ndarray) -> np.ndarray:
    """True where the trend (Spearman rho) and the fold change have the same, non-zero sign."""
    r = np.sign(np.nan_to_num(np.asarray(rho, dtype=float)))
    f = np.sign(np.nan_to_num(np.asarray(log2_fold_change, dtype=float)))
    return (r != 0) & (r == f)


def call_by_evidence(
    q_value: np.ndarray,
    rho: np.ndarray,
    posterior: PosteriorFoldChange,
    *,
    fdr: float,
    min_abs_log2_fold_change: float,
    z: float = CREDIBLE_Z,
) -> np.ndarray:
    """Changed: significant trend, trend and shrunk fold change agree in sign, and the lower end
    of the posterior |log2 fold change|'s credible interval exceeds `min_abs_log2_fold_change`
    (0: the interval excludes no change)."""
    q = np.asarray(q_value, dtype=float)
    significant = np.nan_to_num(q, nan=np.inf) <= fdr
    effect = posterior.lower_abs(z) > min_abs_log2_fold_change
    return significant & sign_agreement(rho, posterior.mean) & effect


def evidence_order(
    called: np.ndarray,
    replicated: np.ndarray,
    q_value: np.ndarray,
    change_replication: np.ndarray,
    effect: np.ndarray,
    *,
    max_log10: float = 50.0,
) -> np.ndarray:
    """Indices that rank features: called and replicated first, then called, then the rest;
    inside each group by evidence = min(-log10 q, max_log10) x change replication (NaN: 1, a
    single replica), then by |effect| (the shrunk fold change), then by index.

    Capping -log10 q keeps a feature with q 1e-300 from outranking, by precision alone, one
    with q 1e-60 and a larger effect: beyond the cap only the effect decides.
    """
    q = np.nan_to_num(np.asarray(q_value, dtype=float), nan=1.0)
    strength = np.minimum(-np.log10(np.clip(q, 1e-300, 1.0)), max_log10)
    rep = np.nan_to_num(np.asarray(change_replication, dtype=float), nan=1.0)
    called = np.asarray(called, dtype=bool)
    group = np.where(called & np.asarray(replicated, dtype=bool), 0, np.where(called, 1, 2))
    idx = np.arange(len(q))
    return np.lexsort([idx, -np.abs(np.asarray(effect, dtype=float)), -(strength * rep), group])


def ranks_from_order(order: np.ndarray) -> np.ndarray:
    """1-based rank of every feature, given the order `evidence_order` returns."""
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


def fires_in_both(count_a: np.ndarray, count_b: np.ndarray, min_count: int = 1) -> np.ndarray:
    """A decoder-direction change means something only for a feature both models use."""
    return (np.asarray(count_a) >= min_count) & (np.asarray(count_b) >= min_count)


def null_threshold(null_values: np.ndarray, alpha: float) -> float:
    """The (1 - alpha) quantile of a statistic under a null fine-tune (NaNs dropped).

    Calling `value > null_threshold(null, alpha)` then calls about alpha of the null's
    features: the direction-change cut that a fine-tune with no real change would pass.
    Uses the 'higher' order statistic, so the realised null rate is never above alpha.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values = np.asarray(null_values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("null_threshold needs at least one non-NaN null value")
    return float(np.quantile(values, 1 - alpha, method="higher"))


def direction_cut(null_values: np.ndarray | None, quantile: float, floor: float) -> float:
    """The direction-change cut: the null fine-tune's `quantile` of 1 - cos, never below `floor`.

    Without a null (no null fine-tune, or none of its features fire) the floor alone decides.
    """
    if null_values is None or np.all(np.isnan(np.asarray(null_values, dtype=float))):
        return float(floor)
    return max(float(floor), null_threshold(null_values, 1.0 - quantile))


def false_discovery_proportion(called: np.ndarray, truly_changed: np.ndarray) -> float:
    """Realised FDP: called features that did not change over called features (0 if none)."""
    called = np.asarray(called, dtype=bool)
    n = int(called.sum())
    if n == 0:
        return 0.0
    return float((called & ~np.asarray(truly_changed, dtype=bool)).sum() / n)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a proportion k / n (e.g. null studies that called anything)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1 - confidence
    lower = 0.0 if k == 0 else float(sps.beta.ppf(a / 2, k, n - k + 1))
    upper = 1.0 if k == n else float(sps.beta.ppf(1 - a / 2, k + 1, n - k))
    return lower, upper
