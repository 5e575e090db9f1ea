"""feature_stats on real token Parquet and real sae-lens SAEs: counts, top examples, files."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from plmdiff.config import paths
from plmdiff.core.errors import DataError
from plmdiff.diff.feature_stats import (
    FeatureStats,
    FeatureStatsPaths,
    complete_sequences,
    held_out_sequences,
)
from tests.unit.diff.synthetic_features import PLANT, SEED, K


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


def test_position_counts_add_up_to_the_totals(planted):
    fs = planted["stats"][("base", 0)]
    width = fs.metadata["position_bin"]
    st = fs.stats.set_index(["model", "feature"])
    for m in PLANT.models:
        counts = fs.model_positions(m)
        assert counts is not None and counts.bin_width == width
        # tokens per bin: the held-out sequences' rows, binned by their first residue
        ids = "', '".join(fs.model_sequences(m)["seq_id"])
        path = planted["dirs"][m][0]
        rows = duckdb.sql(
            f"select pos // {width} as b, count(*) as n from '{path}/*.parquet' "
            f"where seq_id in ('{ids}') group by b order by b"
        ).df()
        assert counts.tokens.tolist() == rows["n"].tolist()
        assert counts.tokens.sum() == st.loc[(m, 0), "n_tokens"]
        per = counts.fires.groupby("feature")["n_fire"].sum()
        assert (per.reindex(st.xs(m).index, fill_value=0) == st.xs(m)["n_fire"]).all()
        assert counts.fires["bin"].max() < len(counts.tokens)


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
    for m in PLANT.models:
        a, b = stored.model_positions(m), loaded.model_positions(m)
        assert a is not None and b is not None
        assert a.tokens.tolist() == b.tokens.tolist()
        pd.testing.assert_frame_equal(a.fires, b.fires)
    with pytest.raises(DataError, match="hold no model 'r9'"):
        stored.model_stats("r9")


def test_sibling_files_follow_the_data_contract():
    stats = paths.feature_stats("r0", "01", "base", 0)
    files = FeatureStatsPaths.of(stats).files()
    assert {k: str(v) for k, v in files.items()} == paths.feature_stats_files("r0", "01", "base", 0)
    assert str(files["fires"]).endswith(paths.FEATURE_STATS_SUFFIXES["fires"])
    with pytest.raises(ValueError, match=r"fold_0\.tsv does not end in \.parquet"):
        FeatureStatsPaths.of("features/fold_0.tsv")


def test_held_out_sequences_are_the_sae_fold(planted):
    dirs = planted["dirs"]["r0"]
    assert held_out_sequences(dirs, K, SEED, 0, held_out=False) is None
    assert held_out_sequences(dirs, 1, SEED, 0, held_out=True) is None
    folds = [set(held_out_sequences(dirs, K, SEED, f, True)) for f in range(K)]
    assert not folds[0] & folds[1] and len(folds[0] | folds[1]) == PLANT.n_sequences
