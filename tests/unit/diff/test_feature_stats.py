"""feature_stats on real token Parquet and real sae-lens SAEs, and the diff of a planted change."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from plmdiff.core.errors import DataError
from plmdiff.diff.diff import DiffConfig, diff_family, family_analyses
from plmdiff.diff.feature_stats import (
    FeatureStats,
    FeatureStatsConfig,
    FeatureStatsPaths,
    complete_sequences,
    compute_feature_stats,
    held_out_sequences,
)
from tests.unit.diff.synthetic_features import Plant, build_planted, dictionary_sae

PLANT = Plant()
K, SEED = 2, 0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_planted(tmp_path_factory.mktemp("planted"), PLANT, K, SEED)


def test_stats_count_what_the_dictionary_put_in(planted):
    fs = planted["stats"][("base", 0)]
    assert fs.d_sae == PLANT.d_in and fs.metadata["models"] == list(PLANT.models)
    st = fs.stats.set_index(["model", "feature"])
    freq = [st.loc[(m, PLANT.planted), "frequency"] for m in PLANT.models]
    assert freq == sorted(freq) and freq[2] > 4 * freq[0]
    for m, p in zip(PLANT.models, PLANT.planted_prob, strict=True):
        assert st.loc[(m, PLANT.planted), "frequency"] == pytest.approx(p, abs=0.08)
        # background atoms: 3 of 23 per token
        assert st.loc[(m, 5), "frequency"] == pytest.approx(3 / 23, abs=0.05)
    # held-out only: fold 0's sequences are exactly the fold-0 sequences of every model
    seqs = fs.sequences
    want = sorted(
        s for m in PLANT.models for s in held_out_sequences(planted["dirs"][m], K, SEED, 0, True)
    )
    assert sorted(seqs["seq_id"]) == want
    assert (st.xs("r0")["n_tokens"] == seqs.loc[seqs.model == "r0", "n_tokens"].sum()).all()
    # the sparse fires add up to the totals
    fires = fs.fires.merge(seqs, on="seq_index")
    per = fires.groupby(["model", "feature"])["n_fire"].sum()
    assert (per.reindex(st.index, fill_value=0) == st["n_fire"]).all()
    sf = fires.groupby(["model", "feature"]).size() / seqs.groupby("model").size()
    assert np.allclose(sf.reindex(st.index, fill_value=0), st["sequence_fraction"])
    assert np.isnan(st["dec_cos_to_base"]).all()


def test_top_examples_hold_the_maximum_and_its_window(planted):
    fs = planted["stats"][("base", 0)]
    top = fs.top[(fs.top.feature == PLANT.planted) & (fs.top.model == "r2")]
    assert list(top["rank"]) == [1, 2, 3]
    assert top["value"].is_monotonic_decreasing
    w = fs.metadata["example_window"]
    for row in top.itertuples():
        acts = np.asarray(row.window_acts)
        assert len(acts) == len(row.window_residues) == 2 * w + 1
        assert acts[w] == pytest.approx(row.value)
        assert np.nanmax(acts) == pytest.approx(row.value)
        inside = row.window_residues.replace("-", "")
        assert len(inside) == np.sum(~np.isnan(acts))
    # the window's residues are the sequence's own, read back with DuckDB
    row = top.iloc[0]
    path = planted["dirs"]["r2"][0]
    seq = duckdb.sql(
        f"select string_agg(residue, '' order by pos) from '{path}/*.parquet' where seq_id = '{row.seq_id}'"
    ).fetchall()[0][0]
    lo = row.pos - w
    expect = "".join(seq[i] if 0 <= i < len(seq) else "-" for i in range(lo, lo + 2 * w + 1))
    assert row.window_residues == expect
    # polars reads the outputs as they are
    import polars as pl

    paths = FeatureStatsPaths.of(planted["root"] / "features/fold_0.parquet")
    assert pl.read_parquet(paths.top).height == len(fs.top)


def test_planted_change_ranks_first_small_q_and_stable(planted):
    models = list(PLANT.models)
    analyses = family_analyses("base", ["base"], models)
    cfg = DiffConfig(top_n=5, stability_cosine=0.7, min_firing_sequences=5)
    result = diff_family(analyses, models, [0, 1], planted["stats"], planted["decoders"], cfg)
    table = result.features
    first = table.iloc[0]
    assert first["feature"] == PLANT.planted and first["rank"] == 1
    assert first["changed"] and first["change"] == "up"
    assert first["q_value"] < 1e-3 and first["log2_fold_change"] > 1
    assert first["stability"] == 1.0 and first["change_replication"] == 1.0 and first["stable"]
    unchanged = table.set_index("feature").loc[5]
    assert not unchanged["changed"] and unchanged["stability"] == 1.0
    assert table["changed"].sum() == 1
    # the fold-1 replica is a permutation of the dictionary: recovered exactly
    match = result.matchings[("base", 1)]
    assert np.array_equal(match.partner, np.argsort(planted["perm"]))
    fold = result.stability[result.stability.comparison == "fold_replica"].iloc[0]
    assert fold["matched_a"] == 1.0 and fold["changed_reappearing"] == 1.0


def test_fine_tuned_direction_change_and_pooled_union(planted, tmp_path):
    """An ft SAE whose atom 7 is rotated: a direction change; pooled covers the union."""
    models = list(PLANT.models)
    atoms = planted["atoms"]
    moved = atoms.copy()
    moved[7] = (atoms[7] + 1.5 * atoms[8]) / np.linalg.norm(atoms[7] + 1.5 * atoms[8])
    cfg = FeatureStatsConfig(batch_tokens=100, top_examples=2, example_window=3)
    stats, decoders = {("base", 0): planted["stats"][("base", 0)]}, {("base", 0): atoms}
    for scheme, dic in (("ft_r1", atoms), ("ft_r2", moved), ("pooled", moved)):
        seq_ids = {m: held_out_sequences(d, K, SEED, 0, True) for m, d in planted["dirs"].items()}
        stats[(scheme, 0)] = compute_feature_stats(
            dictionary_sae(dic), planted["dirs"], cfg, base_decoder=atoms, seq_ids=seq_ids
        )
        decoders[(scheme, 0)] = dic
    assert stats[("ft_r2", 0)].stats.query("feature == 7")["dec_cos_to_base"].iloc[0] < 0.6
    (pm,) = family_analyses("per_model", ["base", "ft_r1", "ft_r2"], models)
    result = diff_family([pm], models, [0], stats, decoders, DiffConfig())
    row = result.features.set_index("feature").loc[7]
    assert row["changed"] and row["direction_change"] > 0.4
    assert pd.isna(row["stable"])  # one replica: stability unknown, never invented
    (pooled,) = family_analyses("pooled", ["base", "pooled"], models)
    result = diff_family(
        [pooled], models, [0], stats, decoders, DiffConfig(), union_decoders={0: [atoms, moved]}
    )
    union = result.stability.set_index("comparison")
    assert union.loc["pooled_vs_union", "matched_b"] == 1.0
    assert union.loc["pooled_vs_union", "matched_a"] == pytest.approx(47 / 48)
    assert union.loc["pooled_vs_union_moved", "n_a"] == 1
    assert union.loc["pooled_vs_union_moved", "matched_a"] == 1.0
    align = union.loc["scheme_alignment"]
    assert align["identity_fraction"] == 1.0


def test_sequences_must_be_contiguous():
    class B:
        def __init__(self, ids, pos):
            self.seq_id = np.array(ids)
            self.pos = np.array(pos)
            self.residue = np.array(["A"] * len(ids))
            self.act = np.zeros((len(ids), 2), np.float32)

    chunks = list(complete_sequences([B(["a", "a", "b"], [0, 1, 0]), B(["b", "c"], [1, 0])], "x"))
    assert [c.seq_ids for c in chunks] == [["a"], ["b"], ["c"]]
    assert chunks[1].residues == ["AA"]
    with pytest.raises(DataError, match="'a' in x are not contiguous"):
        list(complete_sequences([B(["a", "b"], [0, 0]), B(["a"], [1])], "x"))
    with pytest.raises(DataError, match=r"positions 0\.\.L-1"):
        list(complete_sequences([B(["a", "a"], [0, 2])], "x"))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FeatureStats.read(tmp_path / "fold_0.parquet")


def test_run_diff_writes_tables_examples_and_figures(planted, tmp_path):
    from plmdiff.diff.diff import DiffOutputs, run_diff

    root = planted["root"]
    out = DiffOutputs(
        **{
            f: str(tmp_path / n)
            for f, n in [
                ("features_tsv", "features.tsv"),
                ("features_parquet", "features.parquet"),
                ("examples_parquet", "examples.parquet"),
                ("examples_tsv", "examples.tsv"),
                ("stability_tsv", "stability.tsv"),
                ("volcano_png", "volcano.png"),
                ("volcano_svg", "volcano.svg"),
                ("trajectories_png", "trajectories.png"),
                ("stability_png", "stability.png"),
            ]
        }
    )
    run_diff(
        "base",
        list(PLANT.models),
        ["base"],
        [0, 1],
        {("base", f): str(root / f"features/fold_{f}.parquet") for f in (0, 1)},
        {("base", f): str(root / f"sae{f}") for f in (0, 1)},
        DiffConfig(top_n=4, top_examples=2),
        out,
    )
    tsv = pd.read_csv(out.features_tsv, sep="\t")
    assert len(tsv) == 4 and tsv.loc[0, "feature"] == PLANT.planted
    assert tsv.loc[0, "change"] == "up" and pd.isna(tsv.loc[0, "mark"])
    assert {"q_value", "freq_r0", "freq_r2", "stability", "change_replication"} <= set(tsv.columns)
    full = duckdb.sql(f"select count(*) from '{out.features_parquet}'").fetchall()[0][0]
    assert full == PLANT.d_in
    ex = pd.read_parquet(out.examples_parquet)
    planted_ex = ex[ex.feature == PLANT.planted]
    assert set(planted_ex["model"]) == set(PLANT.models)
    assert planted_ex.groupby("model")["example_rank"].max().max() == 2
    ex_tsv = pd.read_csv(out.examples_tsv, sep="\t")
    assert ex_tsv["window"].str.contains(r"\[[A-Z]\]").all()
    stab = pd.read_csv(out.stability_tsv, sep="\t")
    assert stab.loc[0, "comparison"] == "fold_replica"
    for f in ("volcano_png", "volcano_svg", "trajectories_png", "stability_png"):
        assert (tmp_path / getattr(out, f).split("/")[-1]).stat().st_size > 2000


def test_stored_stats_answer_like_the_loaded_ones(planted):
    path = planted["stats_paths"][("base", 1)]
    loaded, stored = FeatureStats.read(path), FeatureStats.open(path)
    assert stored.d_sae == loaded.d_sae and stored.metadata == loaded.metadata
    for m in PLANT.models:
        pd.testing.assert_frame_equal(stored.model_stats(m), loaded.model_stats(m))
        pd.testing.assert_frame_equal(stored.model_sequences(m), loaded.model_sequences(m))
        a = stored.model_fires(m).sort_values(["seq_index", "feature"]).reset_index(drop=True)
        b = loaded.model_fires(m).sort_values(["seq_index", "feature"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    assert len(stored.top) == len(loaded.top)
    with pytest.raises(DataError, match="hold no model 'r9'"):
        stored.model_stats("r9")
