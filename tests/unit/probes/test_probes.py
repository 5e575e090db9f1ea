"""Batched probes: agreement with scikit-learn, planted signals, grouped folds, baselines."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from plmdiff.config.schema import SCHEMA_PATH, fill_defaults, load_schema
from plmdiff.core.errors import DataError
from plmdiff.probes.logreg import Problems, SolverSettings, fit_multinomial
from plmdiff.probes.probes import (
    ACCURACY_COLUMNS,
    GROUPED,
    UNGROUPED,
    ProbeSettings,
    build_design,
    cv_accuracy,
    permute_between_clusters,
    probe_sweep,
    round_labels,
    stratified_folds,
    stratified_group_folds,
)
from plmdiff.testing.synthetic import planted_embeddings


def _sklearn_fit(X, y, C):
    scaler = StandardScaler().fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(scaler.transform(X), y)
    return scaler, model


@pytest.mark.parametrize("precondition", [True, False])
def test_solver_matches_sklearn_on_every_problem(precondition):
    """Coefficients, intercepts and predictions of every (fold, C) problem match scikit-learn."""
    rng = np.random.default_rng(0)
    n, d, K = 300, 12, 3
    y = rng.integers(0, K, n)
    # Offsets and uneven scales: the fold scaler matters, and the raw space is ill-conditioned.
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 20, d) + 50 + rng.normal(size=(K, d))[y]
    X = X.astype(np.float32)
    folds = np.arange(n) % 3
    train = np.stack([folds != f for f in range(3)])
    grid = [(f, C) for f in range(3) for C in (0.05, 1.0)]
    problems = Problems(
        labels=torch.from_numpy(y)[None],
        train=torch.from_numpy(train),
        split=torch.tensor([f for f, _ in grid]),
        label=torch.zeros(len(grid), dtype=torch.long),
        C=torch.tensor([C for _, C in grid]),
        n_classes=K,
    )
    Xt = torch.from_numpy(X)[None]
    fit = fit_multinomial(
        Xt, problems, SolverSettings(max_iter=500, tol=1e-6, precondition=precondition)
    )
    assert bool(fit.converged.all())
    predicted = fit.predict(Xt)[0].numpy()
    for p, (f, C) in enumerate(grid):
        scaler, model = _sklearn_fit(X[train[f]], y[train[f]], C)
        scale = np.abs(model.coef_).max()
        # float32 against float64 on raw features with offsets of 50: agreement to ~0.5%.
        np.testing.assert_allclose(fit.coef[0, p].numpy().T, model.coef_, atol=5e-3 * scale)
        np.testing.assert_allclose(fit.intercept[0, p].numpy(), model.intercept_, atol=1e-2 * scale)
        np.testing.assert_allclose(fit.mean[0, p].numpy(), scaler.mean_, rtol=1e-5)
        np.testing.assert_allclose(fit.scale[0, p].numpy(), scaler.scale_, rtol=1e-4)
        agree = (predicted[p] == model.predict(scaler.transform(X))).mean()
        assert agree >= 0.99


def test_cv_accuracy_agrees_with_sklearn_loop():
    """The benchmark's comparison on a small problem: per-layer mean accuracy within 1 point."""
    data = planted_embeddings(40, 4, 24, [0.0, 0.6, 2.0], seed=3)
    folds = stratified_folds(data.y, 5, seed=0)
    ours, converged = cv_accuracy(list(data.X), data.y, folds, C=0.5)
    assert converged.all()
    theirs = np.zeros_like(ours)
    for layer, X in enumerate(data.X):
        for f in range(5):
            train, test = folds != f, folds == f
            scaler, model = _sklearn_fit(X[train], data.y[train], 0.5)
            theirs[layer, f] = model.score(scaler.transform(X[test]), data.y[test])
    assert np.abs(ours.mean(1) - theirs.mean(1)).max() <= 0.01
    assert theirs[2].mean() > 0.6  # the planted signal is there to be found


@pytest.fixture(scope="module")
def planted_sweep():
    """Round signal planted in layers 2 and 3 of 5; rounds form clusters of 4 near-duplicates."""
    data = planted_embeddings(
        60, 4, 24, [0.0, 0.0, 3.0, 3.0, 0.0], cluster_size=4, cluster_spread=2.0, seed=11
    )
    settings = ProbeSettings(
        folds=4, permutations=19, C=None, C_grid=(0.01, 1.0), inner_folds=2, seed=5
    )
    result = probe_sweep(
        list(data.X), data.y, data.groups, settings, class_names=["r0", "r1", "r2", "r3"]
    )
    return data, settings, result


def test_sweep_finds_planted_layers_and_chance_elsewhere(planted_sweep):
    _, _, result = planted_sweep
    table = result.accuracy.set_index("layer")
    assert list(result.accuracy.columns) == ACCURACY_COLUMNS
    assert (table["chance"] == 0.25).all()
    for layer in (2, 3):
        assert table.loc[layer, "mean_accuracy"] > 0.5
        assert table.loc[layer, "permutation_p"] == pytest.approx(1 / 20)  # the floor
    for layer in (0, 1, 4):
        assert abs(table.loc[layer, "mean_accuracy"] - 0.25) < 0.1
        assert table.loc[layer, "permutation_p"] > 0.05
    # Five layers, two at the floor 1/20: BH gives them q = 1/20 * 5/2 and keeps q >= p.
    np.testing.assert_allclose(table.loc[[2, 3], "permutation_q"], 1 / 20 * 5 / 2)
    assert (table["permutation_q"] >= table["permutation_p"]).all()
    assert (table.loc[[0, 1, 4], "permutation_q"] > 0.05).all()
    assert result.best_layer in (2, 3)
    assert set(table["C"]) <= {0.01, 1.0}
    assert table["converged"].min() > 0.9
    # Confusion at the best layer: every sequence counted once, mostly on the diagonal.
    counts = result.confusion.to_numpy()
    assert counts.sum() == 240
    assert np.trace(counts) / counts.sum() == pytest.approx(
        table.loc[result.best_layer, "mean_accuracy"], abs=0.05
    )


def test_ungrouped_folds_show_cluster_leakage(planted_sweep):
    """Near-duplicate clusters let plain folds score above chance where there is no signal."""
    _, _, result = planted_sweep
    table = result.accuracy.set_index("layer")
    null_layers = [0, 1, 4]
    leak = (
        table.loc[null_layers, "mean_accuracy_ungrouped"] - table.loc[null_layers, "mean_accuracy"]
    )
    assert leak.mean() > 0.1


def test_permutation_baseline_sits_at_chance(planted_sweep):
    _, _, result = planted_sweep
    table = result.accuracy
    assert (table["permutation_mean"] - table["chance"]).abs().max() < 0.06
    assert (table["permutation_q05"] <= table["permutation_mean"]).all()
    assert (table["permutation_mean"] <= table["permutation_q95"]).all()
    per_perm = result.folds[result.folds.scheme == "permutation"]
    assert sorted(per_perm.permutation.unique()) == list(range(1, 20))


def test_grouped_folds_never_split_a_cluster(planted_sweep):
    data, settings, _ = planted_sweep
    design = build_design(data.y, data.groups, settings)
    assert len(design.inner) == len(design.outer) * settings.inner_folds
    for split in design.splits:
        if split.scheme == UNGROUPED:
            continue
        assert not set(data.groups[split.train]) & set(data.groups[split.test])
        assert not (split.train & split.test).any()
        if split.outer >= 0:  # inner splits stay inside their outer training rows
            outer = design.splits[split.outer]
            assert not ((split.train | split.test) & ~outer.train).any()
    # Outer test folds of one scheme partition the rows.
    grouped = [s for s in design.splits if s.scheme == GROUPED and s.outer < 0]
    assert (np.sum([s.test for s in grouped], axis=0) == 1).all()


def test_stratified_group_folds_keep_groups_whole():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 30, 200)
    y = groups % 3
    folds = stratified_group_folds(y, groups, 5, seed=2)
    for g in np.unique(groups):
        assert np.unique(folds[groups == g]).size == 1
    assert np.unique(folds).size == 5


def test_permutation_between_clusters_keeps_round_sizes_and_clumps():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)  # 40 clusters of 5, each from one round
    y = np.repeat(np.arange(4), 50)
    permuted = permute_between_clusters(y, groups, rng)
    assert np.array_equal(np.bincount(permuted), np.bincount(y))
    assert not np.array_equal(permuted, y)
    # Same-size clusters: every cluster still holds a single round after the permutation.
    assert all(np.unique(permuted[groups == g]).size == 1 for g in range(40))


def test_small_class_is_a_clear_error():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(23, 8)).astype(np.float32)
    y = np.array([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(DataError, match=r"round 'r2' has 3 sequences, fewer than probes.folds=5"):
        probe_sweep(
            [X],
            y,
            None,
            ProbeSettings(folds=5, permutations=0, C=1.0),
            class_names=["r0", "r1", "r2"],
        )


def test_round_with_few_clusters_warns_and_runs(caplog):
    """Mode collapse: a round of many sequences in 2 clusters still runs, with a warning."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    groups = np.concatenate([np.arange(20), np.arange(20, 40), 40 + np.arange(20) % 2])
    X = rng.normal(size=(60, 6)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="plmdiff.probes.probes"):
        result = probe_sweep([X], y, groups, ProbeSettings(folds=3, permutations=2, C=1.0))
    assert "round '2' has 20 sequences in only 2 clusters" in caplog.text
    assert result.accuracy.shape[0] == 1


def test_one_round_only_is_an_error():
    X = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(DataError, match="at least 2 rounds"):
        probe_sweep(
            [X], np.zeros(10, dtype=int), None, ProbeSettings(folds=2, permutations=0, C=1.0)
        )


def test_round_labels_follow_config_order_and_reject_unknown_models():
    assert round_labels(np.array(["r2", "r0", "r1"]), ["r0", "r1", "r2"]).tolist() == [2, 0, 1]
    with pytest.raises(DataError, match=r"model\(s\) r9 are not in config models"):
        round_labels(["r0", "r9"], ["r0", "r1"])


def test_settings_from_schema_defaults():
    section = fill_defaults(load_schema(SCHEMA_PATH), {"models": [], "probes": {}})["probes"]
    settings = ProbeSettings.from_config(section)
    assert settings.folds == 5 and settings.C is None
    assert settings.grid == (0.01, 0.1, 1.0, 10.0)
    assert ProbeSettings.from_config({**section, "C": 2.0}).grid == (2.0,)


def test_results_do_not_depend_on_batching():
    """Memory-limited batches (one problem at a time) give the same table as one batch."""
    data = planted_embeddings(20, 3, 10, [0.0, 0.8], cluster_size=2, cluster_spread=0.3, seed=4)
    settings = ProbeSettings(folds=3, permutations=2, C=None, C_grid=(0.1, 1.0), inner_folds=2)
    one = probe_sweep(list(data.X), data.y, data.groups, settings)
    many = probe_sweep(list(data.X), data.y, data.groups, settings, memory_budget=1)
    np.testing.assert_allclose(
        one.accuracy.drop(columns="converged").to_numpy(dtype=float),
        many.accuracy.drop(columns="converged").to_numpy(dtype=float),
        atol=1e-6,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    data = planted_embeddings(30, 3, 16, [0.0, 0.8], seed=2)
    folds = stratified_folds(data.y, 3, seed=0)
    cpu, _ = cv_accuracy(list(data.X), data.y, folds, C=1.0, device="cpu")
    gpu, _ = cv_accuracy(list(data.X), data.y, folds, C=1.0, device="cuda")
    assert np.abs(cpu - gpu).max() <= 1 / 30
