"""Batched probes: agreement with scikit-learn, planted signals, grouped folds, baselines."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from plmdiff.config.schema import SCHEMA_PATH, fill_defaults, load_schema
from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.probes.baselines import (
    AMINO_ACIDS,
    baseline_features,
    composition_features,
    dipeptide_features,
    length_features,
)
from plmdiff.probes.job import check_round_embedder
from plmdiff.probes.logreg import Problems, SolverSettings, fit_multinomial
from plmdiff.probes.probes import (
    ACCURACY_COLUMNS,
    GROUPED,
    UNGROUPED,
    ProbeSettings,
    build_design,
    cv_accuracy,
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


def settings(**overrides) -> ProbeSettings:
    """The schema's defaults with a few keys changed (small, fast tests)."""
    return ProbeSettings.from_section(
        {**section_defaults("probes"), "bootstrap": 200, "margin_permutations": 999, **overrides}
    )


@pytest.fixture(scope="module")
def planted_sweep():
    """Round signal planted in layers 2 and 3 of 5; rounds form clusters of 4 near-duplicates."""
    data = planted_embeddings(
        60, 4, 24, [0.0, 0.0, 3.0, 3.0, 0.0], cluster_size=4, cluster_spread=2.0, seed=11
    )
    probe = settings(folds=4, permutations=19, C=None, C_grid=[0.01, 1.0], inner_folds=2, seed=5)
    result = probe_sweep(
        list(data.X),
        data.y,
        data.groups,
        probe,
        class_names=["r0", "r1", "r2", "r3"],
        cluster_method="planted clusters",
    )
    return data, probe, result


def layer_rows(result) -> pd.DataFrame:
    table = result.accuracy
    return table[table["features"] == "layer"].set_index("layer")


def test_sweep_finds_planted_layers_and_chance_elsewhere(planted_sweep):
    _, _, result = planted_sweep
    table = layer_rows(result)
    recalls = [f"recall_r{k}" for k in range(4)]
    at = ACCURACY_COLUMNS.index("balanced_accuracy_ci_high") + 1
    assert list(result.accuracy.columns) == ACCURACY_COLUMNS[:at] + recalls + ACCURACY_COLUMNS[at:]
    assert (table["chance"] == 0.25).all()
    assert (table["cluster_method"] == "planted clusters").all()
    for layer in (2, 3):
        assert table.loc[layer, "balanced_accuracy"] > 0.5
        assert table.loc[layer, "permutation_p"] == pytest.approx(1 / 20)  # the floor
        # Max-statistic adjustment: the floor survives across layers (BH would not keep it).
        assert table.loc[layer, "permutation_p_fwer"] == pytest.approx(1 / 20)
        low, high = table.loc[layer, ["balanced_accuracy_ci_low", "balanced_accuracy_ci_high"]]
        assert low < table.loc[layer, "balanced_accuracy"] < high and low > 0.25
    for layer in (0, 1, 4):
        assert abs(table.loc[layer, "balanced_accuracy"] - 0.25) < 0.1
        assert table.loc[layer, "permutation_p"] > 0.05
        assert table.loc[layer, "permutation_p_fwer"] >= table.loc[layer, "permutation_p"]
    np.testing.assert_allclose(table["permutation_min_p"], 1 / 20)
    np.testing.assert_allclose(table.loc[[2, 3], "permutation_q"], 1 / 20 * 5 / 2)
    assert result.best_layer in (2, 3)
    assert set(table["C"]) <= {0.01, 1.0}
    assert table["converged"].min() > 0.9
    # Confusion at the best layer: every sequence counted once; its diagonal is the recall.
    counts = result.confusion.to_numpy()
    assert counts.sum() == 240
    recall = np.diag(counts) / counts.sum(1)
    np.testing.assert_allclose(recall, table.loc[result.best_layer, recalls].to_numpy(float))
    assert recall.mean() == pytest.approx(table.loc[result.best_layer, "balanced_accuracy"])


def test_ungrouped_folds_show_cluster_leakage(planted_sweep):
    """Near-duplicate clusters let plain folds score above chance where there is no signal."""
    _, _, result = planted_sweep
    table = layer_rows(result)
    null_layers = [0, 1, 4]
    leak = (
        table.loc[null_layers, "balanced_accuracy_ungrouped"]
        - table.loc[null_layers, "balanced_accuracy"]
    )
    assert leak.mean() > 0.1


def test_permutation_null_sits_at_chance(planted_sweep):
    _, _, result = planted_sweep
    table = layer_rows(result)
    assert (table["permutation_mean"] - table["chance"]).abs().max() < 0.06
    assert (table["permutation_q05"] <= table["permutation_mean"]).all()
    assert (table["permutation_mean"] <= table["permutation_q95"]).all()
    per_perm = result.folds[result.folds.scheme == "permutation"]
    assert sorted(per_perm.permutation.unique()) == list(range(1, 20))


def test_fold_results_are_weighted_by_fold_size():
    """Pooled out-of-fold predictions: the headline is not the unweighted mean over folds."""
    data = planted_embeddings([40, 25, 10], 3, 8, [1.5], seed=3)
    result = probe_sweep(list(data.X), data.y, None, settings(folds=3, permutations=0, C=1.0))
    folds = result.folds[(result.folds.scheme == "grouped") & (result.folds.features == "layer")]
    weighted = np.average(folds["accuracy"], weights=folds["n_test"])
    row = result.accuracy.iloc[0]
    assert row["accuracy"] == pytest.approx(weighted)
    assert row["chance"] == pytest.approx(1 / 3)
    assert row["majority_rate"] == pytest.approx(40 / 75)
    assert np.isnan(row["permutation_p"]) and np.isnan(row["permutation_min_p"])


def test_grouped_folds_never_split_a_cluster(planted_sweep):
    data, probe, _ = planted_sweep
    design = build_design(data.y, data.groups, probe)
    assert len(design.inner) == len(design.outer) * probe.inner_folds
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
    # The baselines' design (no permutations) has the very same real-label folds.
    plain = build_design(data.y, data.groups, probe, permutations=0)
    real = [s for s in design.splits if s.label == 0]
    assert len(plain.splits) == len(real)
    for a, b in zip(plain.splits, real, strict=True):
        assert np.array_equal(a.test, b.test) and np.array_equal(a.train, b.train)


def test_stratified_group_folds_keep_groups_whole():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 30, 200)
    y = groups % 3
    folds = stratified_group_folds(y, groups, 5, seed=2)
    for g in np.unique(groups):
        assert np.unique(folds[groups == g]).size == 1
    assert np.unique(folds).size == 5


# ----------------------------------------------------------------------------- baselines


def _length_driven(seed: int, planted: float):
    """Rounds differ in length; every layer encodes length, `planted` adds a round direction."""
    rng = np.random.default_rng(seed)
    K, per = 3, 60
    y = np.repeat(np.arange(K), per)
    length = rng.normal(100 + 25 * y, 12).clip(30).round().astype(int)
    sequences = ["".join(rng.choice(list(AMINO_ACIDS), size=n)) for n in length]
    d = 8
    code = rng.normal(size=d)
    direction = rng.normal(size=(K, d))
    layers = [
        np.outer((length - 125) / 25, code)
        + 0.3 * rng.normal(size=(len(y), d))
        + planted * direction[y]
        for _ in range(2)
    ]
    return layers, y, sequences


@pytest.mark.parametrize(
    ("planted", "significant"), [(0.0, False), (1.5, True)], ids=["length-only", "planted"]
)
def test_margin_over_the_length_baseline(planted, significant):
    """Length alone: the layers match the length baseline (margin ~0, not significant);
    a planted round direction on top: a significant margin."""
    layers, y, sequences = _length_driven(seed=7, planted=planted)
    result = probe_sweep(
        layers,
        y,
        None,
        settings(folds=3, permutations=19, C=1.0),
        baselines=baseline_features(sequences),
    )
    table = result.accuracy.set_index("features")
    assert table.loc["length", "balanced_accuracy"] > 0.6  # length does tell the rounds apart
    rows = layer_rows(result)
    assert (rows["best_baseline"] == "length").all()
    if significant:
        assert (rows["margin"] > 0.1).all()
        assert (rows["margin_p_fwer"] < 0.01).all()
    else:
        # ~0: a noisy copy of length cannot do better than length itself.
        assert rows["margin"].max() < 0.03 and rows["margin"].abs().max() < 0.1
        assert (rows["margin_p_fwer"] > 0.05).all()
    np.testing.assert_allclose(rows["margin_min_p"], 1 / 1000)


def test_baseline_features():
    seqs = ["ACAC", "WW"]
    np.testing.assert_allclose(length_features(seqs)[:, 0], [4, 2])
    comp = composition_features(seqs)
    assert comp.shape == (2, 20)
    assert comp[0, AMINO_ACIDS.index("A")] == 0.5 and comp[1, AMINO_ACIDS.index("W")] == 1.0
    di = dipeptide_features(seqs)
    ac = AMINO_ACIDS.index("A") * 20 + AMINO_ACIDS.index("C")
    assert di[0, ac] == pytest.approx(2 / 3) and di.sum(1) == pytest.approx([1.0, 1.0])
    X0 = np.ones((2, 3))
    assert set(baseline_features(seqs, X0)) == {
        "length",
        "aa_composition",
        "dipeptide_composition",
        "layer_0",
    }
    with pytest.raises(DataError, match="layer 0 has 1 rows for 2 sequences"):
        baseline_features(seqs, X0[:1])


def test_layer0_baseline_reuses_the_layer_fit(planted_sweep):
    data, _, _ = planted_sweep
    probe = settings(folds=4, permutations=0, C=1.0)
    result = probe_sweep(list(data.X), data.y, data.groups, probe, baselines={"layer_0": data.X[0]})
    table = result.accuracy.set_index("features")
    assert table.loc["layer_0", "balanced_accuracy"] == pytest.approx(
        layer_rows(result).loc[0, "balanced_accuracy"]
    )
    assert layer_rows(result).loc[0, "margin"] == 0.0


def test_self_embedder_is_refused():
    with pytest.raises(ConfigError, match="separate the models, not the sequences"):
        check_round_embedder("self", "probes")
    check_round_embedder("r0", "probes")


# ----------------------------------------------------------------------------- errors, settings


def test_small_class_is_a_clear_error():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(23, 8)).astype(np.float32)
    y = np.array([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(DataError, match=r"round 'r2' has 3 sequences, fewer than probes.folds=5"):
        probe_sweep(
            [X], y, None, settings(folds=5, permutations=0, C=1.0), class_names=["r0", "r1", "r2"]
        )


def test_round_with_few_clusters_warns_and_runs(caplog):
    """Mode collapse: a round of many sequences in 2 clusters still runs, with a warning."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    groups = np.concatenate([np.arange(20), np.arange(20, 40), 40 + np.arange(20) % 2])
    X = rng.normal(size=(60, 6)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="plmdiff.probes.probes"):
        result = probe_sweep([X], y, groups, settings(folds=3, permutations=2, C=1.0))
    assert "round '2' has 20 sequences in only 2 clusters" in caplog.text
    assert result.accuracy.shape[0] == 1


def test_one_round_only_is_an_error():
    X = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(DataError, match="at least 2 rounds"):
        probe_sweep([X], np.zeros(10, dtype=int), None, settings(folds=2, permutations=0, C=1.0))


def test_round_labels_follow_config_order_and_reject_unknown_models():
    assert round_labels(np.array(["r2", "r0", "r1"]), ["r0", "r1", "r2"]).tolist() == [2, 0, 1]
    with pytest.raises(DataError, match=r"model\(s\) r9 are not in config models"):
        round_labels(["r0", "r9"], ["r0", "r1"])


def test_settings_from_schema_defaults():
    section = fill_defaults(load_schema(SCHEMA_PATH), {"models": [], "probes": {}})["probes"]
    probe = ProbeSettings.from_section(section)
    assert probe.folds == 5 and probe.C is None
    # Defaults that can reach the thresholds the table reports.
    assert 1 / (probe.permutations + 1) <= 0.01
    assert 1 / (probe.margin_permutations + 1) <= 0.001
    assert probe.grid == (0.01, 0.1, 1.0, 10.0)
    assert ProbeSettings.from_section({**section, "C": 2.0}).grid == (2.0,)
    with pytest.raises(ConfigError, match=r"probes\.bootstrap is missing"):
        ProbeSettings.from_section({k: v for k, v in section.items() if k != "bootstrap"})


def test_results_do_not_depend_on_batching():
    """Memory-limited batches (one problem at a time) give the same table as one batch."""
    data = planted_embeddings(20, 3, 10, [0.0, 0.8], cluster_size=2, cluster_spread=0.3, seed=4)
    probe = settings(folds=3, permutations=2, C=None, C_grid=[0.1, 1.0], inner_folds=2)
    one = probe_sweep(list(data.X), data.y, data.groups, probe)
    many = probe_sweep(list(data.X), data.y, data.groups, probe, memory_budget=1)
    numeric = one.accuracy.select_dtypes("number").columns.drop("converged")
    np.testing.assert_allclose(
        one.accuracy[numeric].to_numpy(dtype=float),
        many.accuracy[numeric].to_numpy(dtype=float),
        atol=1e-6,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    data = planted_embeddings(30, 3, 16, [0.0, 0.8], seed=2)
    folds = stratified_folds(data.y, 3, seed=0)
    cpu, _ = cv_accuracy(list(data.X), data.y, folds, C=1.0, device="cpu")
    gpu, _ = cv_accuracy(list(data.X), data.y, folds, C=1.0, device="cuda")
    assert np.abs(cpu - gpu).max() <= 1 / 30


def test_correlation_basis_survives_a_lapack_failure(monkeypatch):
    """Float32 eigh can fail on many repeated eigenvalues (sparse dipeptide compositions): the
    basis falls back to float64 with a tiny ridge and still spans the features."""
    from plmdiff.probes import logreg

    X = torch.zeros(1, 50, 6)
    X[0, :, 0] = torch.arange(50.0)
    X[0, :, 1] = X[0, :, 0]  # a duplicate column; 2..5 constant
    real_eigh = torch.linalg.eigh

    def flaky(matrix):
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: failed to converge")
        return real_eigh(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    evals, evecs = logreg._correlation_basis(X, rows=50)
    assert evals.dtype == torch.float32 and evecs.shape == (1, 6, 6)
    assert torch.allclose(evecs[0] @ evecs[0].T, torch.eye(6), atol=1e-5)
    assert evals.max().item() == pytest.approx(2.0, abs=1e-4)  # the duplicated pair
