"""Statistics of the feature diff: the sparse Spearman test, fold change, calls, ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from plmdiff.core.errors import DataError
from plmdiff.core.stats import benjamini_hochberg
from plmdiff.diff.statistics import (
    RoundEvidence,
    analyse_rounds,
    change_kind,
    log2_fold_change,
    rank_features,
    sparse_spearman,
    spearman_p_value,
)
from tests.unit.diff.synthetic_features import diff_config


def _dense(seq_index, feature, value, n, f):
    m = np.zeros((n, f))
    m[seq_index, feature] = value
    return m


def test_sparse_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    n, f = 90, 7
    x = np.repeat(np.arange(3), 30).astype(float)
    dense = np.where(rng.random((n, f)) < 0.3, rng.integers(1, 4, size=(n, f)) / 4, 0.0)
    dense[:, 5] = np.where(x == 2, 0.5, 0.0)  # perfectly tied groups
    dense[:, 6] = 0.0  # never fires: no correlation defined
    dense[3, 6] = 0.25
    si, fi = np.nonzero(dense)
    res = sparse_spearman(x, si, fi, dense[si, fi], f)
    for j in range(f):
        ref = stats.spearmanr(x, dense[:, j])
        assert res.rho[j] == pytest.approx(ref.statistic, abs=1e-10)
        assert res.p_value[j] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)
    assert res.n_nonzero.tolist() == [int(c) for c in (dense > 0).sum(0)]
    empty = sparse_spearman(x, np.array([], int), np.array([], int), np.array([]), 2)
    assert np.isnan(empty.rho).all() and np.isnan(empty.p_value).all()


def test_trend_test_is_calibrated_under_the_null():
    """No round effect: about 5% of features reach p < 0.05 (a real null, not a toy one)."""
    rng = np.random.default_rng(2)
    n, f = 300, 2000
    x = rng.integers(0, 4, size=n).astype(float)
    fire = rng.random((n, f)) < rng.uniform(0.05, 0.6, size=f)
    si, fi = np.nonzero(fire)
    res = sparse_spearman(x, si, fi, rng.uniform(0.01, 1, size=si.size), f)
    rate = np.mean(res.p_value < 0.05)
    assert 0.03 < rate < 0.07
    assert np.mean(benjamini_hochberg(res.p_value) <= 0.05) < 0.005


def test_log2_fold_change_uses_the_pseudocount():
    lfc = log2_fold_change(np.array([0, 10, 10]), 100, np.array([0, 20, 0]), 100, 1.0)
    assert lfc[0] == pytest.approx(0.0)
    assert lfc[1] == pytest.approx(np.log2(21 / 11))
    assert np.isfinite(lfc[2]) and lfc[2] < 0


def _evidence(model, rates, n_tokens=20, d_sae=3, scheme="base", cos=None):
    """Sequences whose firing fractions per feature are `rates` [n_seq, d_sae]."""
    rates = np.asarray(rates, dtype=float)
    counts = np.rint(rates * n_tokens).astype(int)
    n_seq = counts.shape[0]
    offset = {"r0": 0, "r1": 1000, "r2": 2000}[model]
    si, fi = np.nonzero(counts)
    fires = pd.DataFrame({"seq_index": si + offset, "feature": fi, "n_fire": counts[si, fi]})
    seqs = pd.DataFrame(
        {
            "seq_index": np.arange(n_seq) + offset,
            "seq_id": [f"{model}_{i}" for i in range(n_seq)],
            "model": model,
            "n_tokens": n_tokens,
        }
    )
    n_fire = counts.sum(0)
    st = pd.DataFrame(
        {
            "feature": np.arange(d_sae),
            "model": model,
            "n_tokens": n_tokens * n_seq,
            "n_fire": n_fire,
            "frequency": n_fire / (n_tokens * n_seq),
            "mean_act": 1.0,
            "sequence_fraction": (counts > 0).mean(0),
            "dec_cos_to_base": np.ones(d_sae) if cos is None else cos,
            "dec_norm_ratio": 1.0,
        }
    )
    return RoundEvidence(model=model, scheme=scheme, stats=st, sequences=seqs, fires=fires)


def test_analyse_rounds_calls_a_planted_trend_and_not_a_flat_feature():
    rng = np.random.default_rng(3)
    ev = []
    for r, model in enumerate(["r0", "r1", "r2"]):
        rates = np.column_stack(
            [
                rng.binomial(20, [0.02, 0.15, 0.4][r], size=30) / 20,  # planted: rises
                rng.binomial(20, 0.2, size=30) / 20,  # flat
                rng.binomial(20, 0.2, size=30) / 20,  # flat
            ]
        )
        ev.append(_evidence(model, rates))
    cfg = diff_config(min_abs_log2_fold_change=1.0, fdr=0.05)
    table = analyse_rounds(ev, 3, cfg, analysis="base")
    assert table.loc[0, "changed"] and table.loc[0, "spearman_rho"] > 0.5
    assert table.loc[0, "q_value"] < 1e-6
    assert not table.loc[1:, "changed"].any()
    ranked = rank_features(table)
    assert ranked.loc[0, "feature"] == 0 and ranked.loc[0, "rank"] == 1
    assert {"freq_r0", "freq_r2", "p_value", "q_value", "log2_fold_change"} <= set(table.columns)


def test_direction_change_is_called_for_fine_tuned_families():
    rng = np.random.default_rng(4)
    ev = [
        _evidence(m, rng.binomial(20, 0.2, size=(30, 3)) / 20, scheme="ft_r2")
        for m in ("r0", "r1", "r2")
    ]
    direction = {
        "r1": _evidence("r0", np.zeros((1, 3)), cos=np.array([1.0, 0.99, 0.95])).stats,
        "r2": _evidence("r0", np.zeros((1, 3)), cos=np.array([1.0, 0.5, 0.99])).stats,
    }
    table = analyse_rounds(
        ev, 3, diff_config(min_direction_change=0.1), analysis="per_model", direction=direction
    )
    assert table["changed"].tolist() == [False, True, False]
    assert table.loc[1, "direction_change"] == pytest.approx(0.5)
    assert table.loc[2, "dir_change_r1"] == pytest.approx(0.05)
    assert table.loc[2, "dir_change_r2"] == pytest.approx(0.01)
    plain = analyse_rounds(ev, 3, diff_config(min_direction_change=0.1), analysis="base")
    assert not plain["changed"].any() and plain["direction_change"].isna().all()


def test_bad_inputs_are_named():
    ev = _evidence("r0", np.zeros((3, 3)))
    with pytest.raises(DataError, match="base and at least one round"):
        analyse_rounds([ev], 3, diff_config(), analysis="base")
    with pytest.raises(DataError, match="one row per feature"):
        analyse_rounds(
            [ev, _evidence("r1", np.zeros((3, 3)))],
            4,
            diff_config(),
            analysis="base",
        )


def test_spearman_p_value_needs_three_sequences():
    assert np.isnan(spearman_p_value(np.array([0.5, 0.0]), 2)).all()
    p = spearman_p_value(np.array([0.0, np.nan, 1.0]), 10)
    assert p[0] == pytest.approx(1.0) and np.isnan(p[1]) and p[2] == 0.0


def test_change_kind_names_the_call():
    table = pd.DataFrame(
        {
            "q_value": [0.01, 0.01, 0.5, 0.5, np.nan],
            "log2_fold_change": [2.0, -2.0, 3.0, 0.0, 5.0],
            "direction_change": [np.nan, 0.0, 0.0, 0.5, np.nan],
            "changed": [True, True, False, True, False],
        }
    )
    kinds = change_kind(table, diff_config(fdr=0.05, min_direction_change=0.1))
    assert kinds.tolist() == ["up", "down", "", "direction", ""]
