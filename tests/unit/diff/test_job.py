"""The rule entries of the diff stage: run_diff writes every output, run_feature_stats checks
its outputs, and the helpers that unpack what the rules hand over."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import pytest

from plmdiff.activations.readers import token_seq_ids
from plmdiff.config import paths
from plmdiff.config.sections import section_defaults
from plmdiff.core import runtime
from plmdiff.diff.feature_stats import FeatureStats
from plmdiff.diff.job import (
    RULE_OUTPUTS,
    DiffOutputs,
    keyed_paths,
    run_diff,
    run_feature_stats,
    union_by_fold,
)
from plmdiff.probes.clustering import read_clusters
from plmdiff.sae.folds import read_fold_table, write_fold_table
from tests.unit.diff.synthetic_features import PLANT, diff_config

SCRIPTS = Path(__file__).resolve().parents[3] / "workflow_scripts"


def test_run_diff_writes_tables_examples_and_figures(planted, tmp_path):
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
                ("lead_png", "lead.png"),
                ("stability_png", "stability.png"),
                ("fit_tsv", "fit.tsv"),
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
        diff_config(top_n=4, top_examples=2),
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
    fit = pd.read_csv(out.fit_tsv, sep="\t")
    assert set(fit["model"]) == set(PLANT.models) and set(fit["fold"]) == {0, 1}
    assert ((fit["fvu"] >= 0) & (fit["l0"] > 0) & fit["dead_fraction"].between(0, 1)).all()
    for f in ("volcano_png", "volcano_svg", "trajectories_png", "lead_png", "stability_png"):
        assert (tmp_path / getattr(out, f).split("/")[-1]).stat().st_size > 2000


def test_rule_inputs_are_unpacked_by_key():
    keys = [["base", 0], ["base", 1], ["ft_r1", 0]]
    assert keyed_paths(keys, ["a", "b", "c"]) == {
        ("base", 0): "a",
        ("base", 1): "b",
        ("ft_r1", 0): "c",
    }
    with pytest.raises(ValueError):
        keyed_paths(keys, ["a"])
    assert union_by_fold([], []) is None
    assert union_by_fold([["ft_r1", 0], ["ft_r2", 0]], ["x", "y"]) == {0: ["x", "y"]}


def test_diff_outputs_read_the_rule_outputs_by_name():
    output = SimpleNamespace(**{name: f"out/{name}" for name in RULE_OUTPUTS.values()})
    outputs = DiffOutputs.from_rule(output)
    assert outputs.features_tsv == "out/features" and outputs.stability_png == "out/stability_png"


def test_feature_stats_outputs_must_be_siblings(planted, tmp_path):
    files = paths.feature_stats_files("r0", "01", "base", 0)
    with pytest.raises(
        ValueError, match=r"output top is .*x\.parquet; must be .*fold_0\.top\.parquet"
    ):
        run_feature_stats(
            planted["sae_paths"][("base", 0)],
            None,
            {},
            {**files, "top": "x.parquet"},
            {},
            kfold=2,
            fold_seed=0,
            fold=0,
            device="cpu",
            metadata={},
        )


def _run_script(name, monkeypatch, **snakemake):
    """Run workflow_scripts/<name> as Snakemake would, with a stand-in `snakemake` object."""
    monkeypatch.setattr(runtime, "setup_logging", lambda log: None)  # keep pytest's logging
    stub = SimpleNamespace(log=["rule.log"], **snakemake)
    runpy.run_path(str(SCRIPTS / name), init_globals={"snakemake": stub})


def test_rule_scripts_hand_over_to_the_job(planted, tmp_path, monkeypatch):
    keys = [("base", 0), ("base", 1)]
    output = SimpleNamespace(**{n: str(tmp_path / "diff" / n) for n in RULE_OUTPUTS.values()})
    _run_script(
        "diff.py",
        monkeypatch,
        wildcards=SimpleNamespace(family="base"),
        params=SimpleNamespace(
            models=list(PLANT.models),
            schemes=["base"],
            folds=[0, 1],
            stats_keys=keys,
            union_keys=[],
            null_folds=[],
            diff={**section_defaults("diff"), "top_n": 4},
        ),
        input=SimpleNamespace(
            stats=[planted["stats_paths"][k] for k in keys],
            saes=[planted["sae_paths"][k] for k in keys],
            union=[],
            null=[],
        ),
        output=output,
    )
    tsv = pd.read_csv(output.features, sep="\t")
    assert len(tsv) == 4 and tsv.loc[0, "feature"] == PLANT.planted

    stats = paths.feature_stats_siblings(tmp_path / "features/fold_0.parquet")
    # Every model's sequence i is one cluster: the held-out fold takes all three or none.
    ids = sorted(token_seq_ids([d[0] for d in planted["dirs"].values()]))
    clusters = tmp_path / "clusters.tsv"
    pd.DataFrame(
        {"seq_id": ids, "cluster": [i.rsplit("_", 1)[1] for i in ids], "method": "test"}
    ).to_csv(clusters, sep="\t", index=False)
    folds = tmp_path / "folds.tsv"
    write_fold_table(read_clusters(clusters), folds, 2, 0)
    _run_script(
        "feature_stats.py",
        monkeypatch,
        wildcards=SimpleNamespace(embedder="r0", scheme="base"),
        params=SimpleNamespace(
            replicas=[
                {
                    "layer": 1,
                    "fold": 0,
                    "token_dirs": {m: str(d[0]) for m, d in planted["dirs"].items()},
                }
            ],
            diff={**section_defaults("diff"), "top_examples": 2},
            kfold=2,
            fold_seed=0,
        ),
        config={"device": "cpu"},
        input=SimpleNamespace(
            saes=[planted["sae_paths"][("base", 0)]], base_saes=[], folds=[str(folds)]
        ),
        output={k: [str(p)] for k, p in stats.items()},
    )
    fs = FeatureStats.read(stats["stats"])
    held = fs.sequences["seq_id"].str.rsplit("_", n=1).str[1]
    fold_of = read_fold_table(folds, 2)
    assert {fold_of[i] for i in fs.sequences["seq_id"]} == {0}
    assert (held.value_counts() == len(PLANT.models)).all()  # whole clusters
    assert set(fs.metadata["fit"]) == set(PLANT.models)
    assert fs.metadata["held_out"] and fs.metadata["scheme"] == "base"
    assert fs.metadata["top_examples"] == 2 and fs.d_sae == PLANT.d_in
