"""Statistics of the feature diff: the sparse Spearman test, fold change, calls, ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from plmdiff.core.errors import DataError
from plmdiff.core.stats import benjamini_hochberg
from plmdiff.diff.stability import add_replication
from plmdiff.diff.statistics import (
    RoundEvidence,
    analyse_rounds,
    change_kind,
    direction_call,
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
            "n_firing_sequences": (counts > 0).sum(0),
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
    ranked = rank_features(add_replication(table, [], [], cfg))
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
    assert (table["direction_cut"] == 0.1).all()  # no null: the floor decides
    plain = analyse_rounds(ev, 3, diff_config(min_direction_change=0.1), analysis="base")
    assert not plain["changed"].any() and plain["direction_change"].isna().all()
    assert plain["direction_cut"].isna().all()


def test_direction_cut_comes_from_the_null_fine_tune_above_the_floor():
    rng = np.random.default_rng(5)
    ev = [
        _evidence(m, rng.binomial(20, 0.2, size=(30, 3)) / 20, scheme="ft_r2")
        for m in ("r0", "r1", "r2")
    ]
    moved = {"r2": _evidence("r0", np.zeros((1, 3)), cos=np.array([0.999, 0.99, 0.9])).stats}
    null = rng.uniform(0, 0.02, size=5000)  # fine-tuning noise moves rows up to 0.02
    cfg = diff_config(min_direction_change=0.0, direction_null_quantile=0.999)
    table = analyse_rounds(ev, 3, cfg, analysis="per_model", direction=moved, null_direction=null)
    cut = float(np.quantile(null, 0.999, method="higher"))
    assert table["direction_cut"].iloc[0] == pytest.approx(cut)
    # 0.001 is within the null's noise, 0.01 too; 0.1 is beyond it
    assert table["changed"].tolist() == [False, False, True]
    floored = analyse_rounds(
        ev,
        3,
        diff_config(min_direction_change=0.2),
        analysis="per_model",
        direction=moved,
        null_direction=null,
    )
    assert (floored["direction_cut"] == 0.2).all() and not floored["changed"].any()


def test_a_latent_that_does_not_fire_in_both_models_is_not_a_direction_change():
    rng = np.random.default_rng(6)
    ev = []
    for m in ("r0", "r1", "r2"):
        rates = rng.binomial(20, 0.2, size=(30, 3)) / 20
        if m == "r0":
            rates[:, 1] = 0.0  # feature 1: silent in the base
        rates[:, 2] = 0.0  # feature 2: silent everywhere
        ev.append(_evidence(m, rates, scheme="ft_r2"))
    moved = {"r2": _evidence("r0", np.zeros((1, 3)), cos=np.array([0.5, 0.5, 0.5])).stats}
    table = analyse_rounds(
        ev, 3, diff_config(min_direction_change=0.1), analysis="per_model", direction=moved
    )
    assert table["fires_in_both"].tolist() == [True, False, False]
    assert table["direction_change"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert direction_call(table).tolist() == [True, False, False]
    # feature 1 rises from nothing: a frequency change, never a direction change
    kinds = change_kind(table, diff_config(min_direction_change=0.1)).tolist()
    assert kinds == ["direction", "up", ""]
    assert table["changed"].tolist() == [True, True, False]


def _known_change_rounds() -> list[RoundEvidence]:
    """30 sequences of 20 tokens per round. Feature 0: frequent, moderate rise (20% -> 32% of
    tokens, log2 0.68); 1: rare, 0 -> 8 firing tokens (raw log2 fold change 3.2); 2: flat;
    3: spreads thin (more sequences fire, fewer tokens: trend up, fold change down)."""
    rng = np.random.default_rng(7)
    rounds = []
    for r, model in enumerate(["r0", "r1", "r2"]):
        rare = np.zeros(30)
        rare[: [0, 2, 8][r]] = 1 / 20
        thin = np.zeros(30)
        share, rate = [(0.1, 0.9), (0.4, 0.2), (0.7, 0.1)][r]
        thin[: round(30 * share)] = rate
        rates = np.column_stack(
            [
                rng.binomial(20, [0.2, 0.26, 0.32][r], size=30) / 20,
                rare,
                rng.binomial(20, 0.2, size=30) / 20,
                thin,
            ]
        )
        rounds.append(_evidence(model, rates, d_sae=4))
    return rounds


def test_moderate_frequent_rise_is_called_and_ranked_first_rare_and_disagreeing_are_not():
    cfg = diff_config()
    table = analyse_rounds(_known_change_rounds(), 4, cfg, analysis="base")
    # the old rule (q <= fdr and |pseudocount log2 FC| >= 1) would call the rare feature
    # and miss the moderate rise; the posterior call does the opposite
    assert table.loc[1, "q_value"] <= cfg.fdr and table.loc[1, "log2_fold_change"] > 3
    assert table.loc[1, "posterior_log2_fold_change"] < 1
    assert table.loc[1, "posterior_abs_log2_fold_change_lower"] == 0
    assert abs(table.loc[0, "log2_fold_change"]) < 1 and table.loc[0, "q_value"] < 1e-4
    assert table.loc[0, "posterior_abs_log2_fold_change_lower"] > 0
    # feature 3: a significant rising trend whose fold change points down
    assert table.loc[3, "q_value"] <= cfg.fdr and table.loc[3, "spearman_rho"] > 0
    assert table.loc[3, "posterior_log2_fold_change"] < 0 and not table.loc[3, "sign_agreement"]
    assert table["changed"].tolist() == [True, False, False, False]
    assert change_kind(table, cfg).tolist() == ["up", "", "", ""]
    ranked = rank_features(add_replication(table, [], [], cfg))
    assert ranked["feature"].tolist()[0] == 0
    # among the uncalled, the strongest evidence leads: the rare feature's q is the weakest
    assert ranked["feature"].tolist().index(1) > ranked["feature"].tolist().index(3)


def test_q_values_match_statsmodels_with_untested_features():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    table = analyse_rounds(_known_change_rounds(), 4, diff_config(), analysis="base")
    p = table["p_value"].to_numpy()
    tested = ~np.isnan(p)
    ref = multipletests(p[tested], method="fdr_bh")[1]
    np.testing.assert_allclose(table["q_value"].to_numpy()[tested], ref, rtol=1e-12)
    assert np.isnan(table["q_value"].to_numpy()[~tested]).all()


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
            "spearman_rho": [0.5, -0.5, 0.5, 0.0, 0.5],
            "posterior_log2_fold_change": [2.0, -2.0, 3.0, 0.0, 5.0],
            "posterior_log2_fold_change_sd": [0.1, 0.1, 0.1, 0.1, 0.1],
            "direction_change": [np.nan, 0.0, 0.0, 0.5, np.nan],
            "direction_cut": [0.1] * 5,
            "fires_in_both": [True] * 5,
        }
    )
    kinds = change_kind(table, diff_config(fdr=0.05, min_direction_change=0.1))
    assert kinds.tolist() == ["up", "down", "", "direction", ""]
