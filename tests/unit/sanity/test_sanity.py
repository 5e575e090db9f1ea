"""Sanity statistics on synthetic embeddings with known structure, and their figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError
from plmdiff.probes.plots import (
    plot_accuracy_per_layer,
    plot_confusion,
    plot_cosine_grid,
    plot_sanity_stats,
    plot_tsne_grid,
)
from plmdiff.probes.probes import ProbeSettings, probe_sweep
from plmdiff.sanity.checks import (
    SanitySettings,
    cosine_table,
    crossfit_distances,
    mantel_trend_test,
    round_means,
    sanity_checks,
    stratified_subsample,
    variance_ratio_test,
    write_sanity_tables,
    zscore,
)
from plmdiff.testing.synthetic import planted_embeddings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sanity_settings(**overrides) -> SanitySettings:
    """The schema's defaults with a few keys changed."""
    return SanitySettings.from_section(
        {**section_defaults("sanity"), "bootstrap": 200, **overrides}
    )


def centroid_distances(X: np.ndarray, y: np.ndarray, K: int) -> np.ndarray:
    means = round_means(zscore(X), y, K)
    return np.linalg.norm(means[:, None] - means[None], axis=-1)


def test_variance_ratio_is_high_with_signal_and_about_one_without():
    data = planted_embeddings(40, 4, 16, [0.0, 4.0], seed=0)
    null = variance_ratio_test(data.X[0], data.y, 199, seed=1)
    signal = variance_ratio_test(data.X[1], data.y, 199, seed=1)
    assert signal.ratio > 2 and signal.p_value == pytest.approx(1 / 200)
    assert 0.5 < null.ratio < 2 and null.p_value > 0.05
    assert signal.between > signal.within


def test_variance_p_values_are_roughly_uniform_without_signal():
    p = [
        variance_ratio_test(
            planted_embeddings(15, 3, 8, [0.0], seed=s).X[0],
            np.repeat(np.arange(3), 15),
            99,
            seed=s,
        ).p_value
        for s in range(30)
    ]
    assert 0.3 < np.mean(p) < 0.7
    assert np.mean(np.array(p) < 0.1) <= 0.2  # about 10% expected


def test_mantel_is_positive_with_a_planted_trend_and_exact_for_few_rounds():
    trend = planted_embeddings(30, 5, 16, [4.0], trend=True, seed=3)
    random = planted_embeddings(30, 5, 16, [4.0], trend=False, seed=3)
    result = mantel_trend_test(centroid_distances(trend.X[0], trend.y, 5), 99, seed=0)
    assert result.r > 0.8
    assert result.exact and result.permutations == math.factorial(5)
    # The identity order is the best of all 120 and its reversal ties it: p = 2/5!.
    assert result.p_value == pytest.approx(2 / 120) == result.min_p
    assert result.testable
    no_trend = mantel_trend_test(centroid_distances(random.X[0], random.y, 5), 99, seed=0)
    assert no_trend.r < 0.5 and no_trend.p_value > 0.05


def test_mantel_with_many_rounds_uses_random_permutations():
    trend = planted_embeddings(10, 9, 16, [4.0], trend=True, seed=3)
    result = mantel_trend_test(centroid_distances(trend.X[0], trend.y, 9), 199, seed=0)
    assert not result.exact and result.permutations == 199
    assert result.min_p == pytest.approx(1 / 200)
    assert result.r > 0.8 and result.p_value <= 0.02


@pytest.mark.parametrize(
    ("rounds", "testable", "floor"), [(4, False, 2 / 24), (6, True, 2 / 720)], ids=["4", "6"]
)
def test_perfect_trend_is_untestable_with_four_rounds_and_significant_with_six(
    rounds, testable, floor
):
    """The whole check (cross-fitted distances, clusters): with 4 rounds no order can give
    p <= 0.05, and the table says so with the exact floor; with 6 the same trend is found."""
    data = planted_embeddings(
        30, rounds, 16, [0.0, 5.0], trend=True, cluster_size=2, cluster_spread=0.3, seed=4
    )
    result = sanity_checks(
        dict(enumerate(data.X)),
        data.y,
        [f"r{k}" for k in range(rounds)],
        sanity_settings(permutations=99),
        groups=data.groups,
        cluster_method="planted",
        tsne=False,
    )
    trend = result.trend.set_index("layer")
    assert (trend["testable"] == testable).all()
    np.testing.assert_allclose(trend["min_p"], floor)
    assert trend.loc[1, "mantel_r"] > 0.9
    assert trend.loc[1, "permutation_p"] == pytest.approx(floor)  # the best order, and reversed
    if testable:
        assert trend.loc[1, "permutation_p_fwer"] <= 0.05
    else:
        assert trend.loc[1, "permutation_p"] > 0.05
    assert (trend["cluster_method"] == "planted").all()


def test_crossfit_distance_has_no_noise_floor():
    """Rounds that do not differ: plain squared centroid distances carry tr(Sigma)/n noise that
    grows with spread and shrinks with round size; cross-fitted ones average to zero."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [20, 200, 20])
    sd = np.array([1.0, 1.0, 3.0])
    plain, crossfit = [], []
    for seed in range(40):
        X = rng.normal(size=(y.size, 50)) * sd[y][:, None]
        plain.append(centroid_distances(X, y, 3) ** 2)
        D = crossfit_distances(X, y, np.arange(y.size), 3, seed=seed)
        crossfit.append(np.sign(D) * D**2)
    plain, crossfit = np.mean(plain, 0), np.mean(crossfit, 0)
    assert plain[0, 2] > 3 * plain[0, 1]  # noise, not signal, and it differs by pair
    assert np.abs(crossfit).max() < 0.15 * plain[0, 2]


def test_mantel_needs_three_rounds():
    assert math.isnan(mantel_trend_test(np.eye(2), 9, seed=0).r)


def test_cosine_table_of_round_means():
    data = planted_embeddings(20, 3, 8, [1.0], seed=0)
    table = cosine_table(data.X[0], data.y, ["a", "b", "c"])
    assert len(table) == 9
    square = table.pivot(index="round_i", columns="round_j", values="cosine").to_numpy()
    np.testing.assert_allclose(np.diag(square), 1.0)
    np.testing.assert_allclose(square, square.T)
    # Raw means share the massive-activation offset; centred ones do not.
    assert square.min() > 0.9
    assert table["cosine_centred"].min() < 0


def test_stratified_subsample_keeps_each_round_share():
    y = np.repeat([0, 1, 2], [600, 300, 100])
    rows = stratified_subsample(y, 100, seed=0)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)
    assert np.bincount(y[rows]).tolist() == [60, 30, 10]
    assert len(stratified_subsample(y, 5000, seed=0)) == 1000


def test_selected_layers_must_be_stored():
    settings = sanity_settings(layers=[0, 7])
    assert sanity_settings().select_layers([2, 0, 1], "f") == [0, 1, 2]
    with pytest.raises(
        ConfigError, match=r"sanity.layers: layer 7 is not stored in p.parquet \(stored: 0, 1, 2\)"
    ):
        settings.select_layers([0, 1, 2], "p.parquet")


def test_sanity_checks_end_to_end_with_figures(tmp_path):
    data = planted_embeddings(25, 3, 12, [0.0, 5.0], trend=True, seed=2)
    names = ["r0", "r1", "r2"]
    settings = sanity_settings(tsne_perplexity=5, tsne_max_points=45, permutations=49, seed=1)
    result = sanity_checks(dict(enumerate(data.X)), data.y, names, settings)
    assert result.variance.permutation_p.iloc[1] == pytest.approx(1 / 50)
    assert result.variance.permutation_p_fwer.iloc[1] == pytest.approx(1 / 50)
    variance = result.variance.iloc[1]
    assert (
        variance.variance_ratio_ci_low < variance.variance_ratio < variance.variance_ratio_ci_high
    )
    distances = result.cosine[(result.cosine.layer == 1) & (result.cosine.round_i == "r0")]
    assert (distances.distance_ci_low <= distances.distance + 1e-9).all()
    assert (distances.distance <= distances.distance_ci_high + 1e-9).all()
    assert (result.trend.cluster_method == "none").all()
    # BH across the two layers; the planted layer stays significant.
    for table in (result.variance, result.trend):
        np.testing.assert_allclose(
            table.permutation_q, stats.false_discovery_control(table.permutation_p)
        )
    assert result.variance.permutation_q.iloc[1] <= 0.05
    assert result.variance.variance_ratio.iloc[1] > result.variance.variance_ratio.iloc[0]
    assert result.trend.mantel_r.iloc[1] > 0.9
    assert (
        len(result.tsne_rows) == 45 and np.bincount(data.y[result.tsne_rows]).tolist() == [15] * 3
    )
    assert result.tsne[0].shape == (45, 2)
    paths = {name: tmp_path / f"{name}.tsv" for name in ("variance", "trend", "cosine")}
    write_sanity_tables(result, *(str(p) for p in paths.values()))
    back = pd.read_csv(paths["variance"], sep="\t")
    assert list(back.columns[:4]) == [
        "layer",
        "between_variance",
        "within_variance",
        "variance_ratio",
    ]
    plot_tsne_grid(result.tsne, data.y[result.tsne_rows], names, tmp_path / "tsne.png")
    plot_cosine_grid(result.cosine, names, tmp_path / "cosine.png")
    plot_sanity_stats(result.variance, result.trend, tmp_path / "stats.png")
    for name in ("tsne", "cosine", "stats"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_probe_figures(tmp_path):
    data = planted_embeddings(12, 3, 6, [0.0, 2.0], seed=1)
    probe = ProbeSettings.from_section(
        {**section_defaults("probes"), "folds": 3, "permutations": 3, "C": 1.0}
    )
    result = probe_sweep(list(data.X), data.y, None, probe, baselines={"length": data.X[0][:, :1]})
    plot_accuracy_per_layer(result.accuracy, tmp_path / "acc.png", tmp_path / "acc.svg")
    plot_confusion(result.confusion, tmp_path / "confusion.png")
    assert (tmp_path / "acc.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG_MAGIC
    assert "<svg" in (tmp_path / "acc.svg").read_text()
