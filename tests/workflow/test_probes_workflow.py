"""cluster_sequences, probes and sanity in a real Snakemake run, from FASTA to figures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.probes.clustering import mmseqs_binary
from plmdiff.probes.probes import ACCURACY_COLUMNS, load_round_embeddings
from plmdiff.testing.checkpoints import family_sequences, make_tiny_checkpoint
from tests.conftest import LOCAL_CORES, dry_run_jobs, run_snakemake, tiny_config, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

RULES = (
    "check_checkpoint",
    "extract",
    "gather_pooled",
    "cluster_sequences",
    "probes",
    "sanity",
)
MODELS = ("r0", "r1", "r2")
PER_MODEL = 14


def write_study_fasta(workdir: Path) -> dict[str, list[SequenceEntry]]:
    """Each model's FASTA; every model also repeats one sequence of r0 (mode collapse)."""
    seqs = family_sequences(limit=1 + len(MODELS) * PER_MODEL)
    shared = seqs[0][:60]
    out = {}
    for k, model in enumerate(MODELS):
        entries = [
            SequenceEntry(
                f"{model}_000_{i:05d}", seqs[1 + k * PER_MODEL + i][:60], {"model": model}
            )
            for i in range(PER_MODEL - 1)
        ]
        entries.append(SequenceEntry(f"{model}_001_00000", shared, {"model": model}))
        write_fasta(workdir / "results" / "fasta" / f"{model}.fasta", entries)
        out[model] = entries
    return out


@pytest.fixture(scope="module")
def probes_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrained")
    checkpoints = {
        f"r{i}": make_tiny_checkpoint(root / f"output_iteration{i}", seed=i, train_steps=0)
        for i in range(3)
    }
    workdir = tmp_path_factory.mktemp("probes_run")
    config = tiny_config(
        checkpoints,
        activations={"shards": 1},
        probes={"C": None, "C_grid": [0.1, 1.0], "inner_folds": 2, "permutations": 3},
        sanity={"tsne_max_points": 30, "permutations": 19},
    )
    configfile = write_config(workdir / "config.yaml", config)
    fastas = write_study_fasta(workdir)
    targets = [f"results/probes/r0/{p}/accuracy.tsv" for p in ("last", "mean")]
    targets.append("results/sanity/r0/variance.tsv")
    run_snakemake(workdir, configfile, *LOCAL_CORES, "--allowed-rules", *RULES, "--", *targets)
    return workdir, configfile, fastas, targets


def recorded_method() -> str:
    return "mmseqs2" if mmseqs_binary() else "exact duplicates"


def test_clusters_cover_every_sequence_and_group_the_shared_one(probes_run):
    workdir, _, fastas, _ = probes_run
    table = pd.read_csv(workdir / "results" / "clusters" / "clusters.tsv", sep="\t")
    ids = [e.seq_id for entries in fastas.values() for e in entries]
    assert sorted(table.seq_id) == sorted(ids)
    cluster = dict(zip(table.seq_id, table.cluster, strict=True))
    assert len({cluster[f"{m}_001_00000"] for m in MODELS}) == 1
    assert table.method.nunique() == 1 and table.method[0].startswith(recorded_method())
    log = (workdir / "logs" / "cluster_sequences.log").read_text()
    assert re.search(rf"{3 * PER_MODEL} sequences in \d+ clusters \({recorded_method()}", log)


BASELINES = ["length", "aa_composition", "dipeptide_composition", "layer_0"]


def test_probe_tables_and_figures(probes_run):
    workdir = probes_run[0]
    method = pd.read_csv(workdir / "results" / "clusters" / "clusters.tsv", sep="\t").method[0]
    for pooling in ("last", "mean"):
        out = workdir / "results" / "probes" / "r0" / pooling
        table = pd.read_csv(out / "accuracy.tsv", sep="\t")
        at = ACCURACY_COLUMNS.index("balanced_accuracy_ci_high") + 1
        recalls = [f"recall_{m}" for m in MODELS]
        assert list(table.columns) == ACCURACY_COLUMNS[:at] + recalls + ACCURACY_COLUMNS[at:]
        assert table.features.tolist() == ["layer"] * 3 + BASELINES
        layers = table[table.features == "layer"]
        assert layers.layer.tolist() == [0, 1, 2] and table.layer[3:].isna().all()
        np.testing.assert_allclose(table.chance, 1 / 3, atol=1e-6)
        for column in ("balanced_accuracy", "balanced_accuracy_ungrouped", "accuracy", *recalls):
            assert table[column].between(0, 1).all()
        assert (table.balanced_accuracy_ci_low <= table.balanced_accuracy_ci_high).all()
        assert layers.permutation_p.isin([0.25, 0.5, 0.75, 1.0]).all()
        assert (layers.permutation_p_fwer >= layers.permutation_p).all()
        assert (layers.permutation_min_p == 0.25).all()
        assert (table.best_baseline.isin(BASELINES)).all()
        assert layers.margin_p.between(0.01, 1).all() and (layers.margin_min_p == 0.01).all()
        assert set(table.C) <= {0.1, 1.0}
        assert (table.n_sequences == 3 * PER_MODEL).all()
        assert (table.n_clusters <= 3 * PER_MODEL - 2).all()
        # The caption names the column; the column names the method that ran.
        assert (table.cluster_method == method).all()
        confusion = pd.read_csv(out / "confusion.tsv", sep="\t", index_col=0)
        assert list(confusion.index) == list(MODELS) == list(confusion.columns)
        assert confusion.to_numpy().sum() == 3 * PER_MODEL
        folds = pd.read_csv(out / "folds.tsv", sep="\t")
        assert set(folds.scheme) == {"grouped", "ungrouped", "permutation"}
        # layers x folds x (2 schemes + 3 permutations), then baselines x folds x 2 schemes
        assert len(folds) == 3 * 3 * (2 + 3) + 4 * 3 * 2
        for name in ("acc_per_layer.png", "confusion.png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (out / "acc_per_layer.svg").read_text()
        assert "device: cpu" in (workdir / "logs" / "probes" / "r0" / f"{pooling}.log").read_text()


def test_rows_are_sorted_by_seq_id_whatever_the_file_order(probes_run):
    """Shards and batch order decide the order of pooled rows; the probes never see it."""
    workdir = probes_run[0]
    pooled = [workdir / "results" / "activations" / "r0" / f"{m}.pooled.parquet" for m in MODELS]
    a = load_round_embeddings(pooled, "last", MODELS, layers=[1])
    b = load_round_embeddings(pooled[::-1], "last", MODELS, layers=[1])
    assert list(a.seq_id) == sorted(a.seq_id)
    assert np.array_equal(a.seq_id, b.seq_id) and np.array_equal(a.X[1], b.X[1])
    assert np.array_equal(a.y, b.y)


def test_sanity_tables_and_figures(probes_run):
    out = probes_run[0] / "results" / "sanity" / "r0"
    variance = pd.read_csv(out / "variance.tsv", sep="\t")
    assert variance.layer.tolist() == [0, 1, 2]
    assert (variance.variance_ratio > 0).all() and variance.permutation_p.between(0.05, 1).all()
    assert (variance.permutation_p_fwer >= variance.permutation_p).all()
    assert variance.cluster_method.str.startswith(recorded_method()).all()
    trend = pd.read_csv(out / "trend.tsv", sep="\t")
    assert trend.exact.all() and (trend.permutations == 6).all()
    # Three rounds: the exact floor 2/3! = 1/3 can never reach alpha 0.05.
    assert (~trend.testable).all()
    np.testing.assert_allclose(trend.min_p, 1 / 3, atol=1e-6)
    cosine = pd.read_csv(out / "cosine.tsv", sep="\t")
    assert len(cosine) == 3 * 9
    np.testing.assert_allclose(cosine[cosine.round_i == cosine.round_j].cosine, 1.0, atol=1e-6)
    off = cosine[cosine.round_i != cosine.round_j]
    assert (off.distance_ci_low <= off.distance_ci_high).all()
    assert off.distance_crossfit.notna().all()
    for name in ("tsne_last_token_grid.png", "cosine_grid.png", "stats_per_layer.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_self_embedder_gets_no_round_probes(probes_run):
    """With `self`, only embedders that embed every round are probed (dry run of the DAG)."""
    workdir, configfile, _, _ = probes_run
    config = yaml.safe_load(configfile.read_text())
    config["activations"]["embedders"] = ["base", "self"]
    other = write_config(workdir / "config_self.yaml", config)
    dry = run_snakemake(workdir, other, "-n", "all")
    out = dry.stdout + dry.stderr
    assert "results/probes/self" not in out and "results/sanity/self" not in out
    assert "results/activations/self" in out  # self is still extracted for the SAEs and diffs


def test_rerun_is_a_no_op_and_a_sanity_setting_reruns_only_sanity(probes_run):
    workdir, configfile, _, targets = probes_run
    dry = run_snakemake(workdir, configfile, "-n", "--allowed-rules", *RULES, "--", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    config = yaml.safe_load(configfile.read_text())
    config["sanity"]["permutations"] = 29
    other = write_config(workdir / "config_changed.yaml", config)
    dry = run_snakemake(workdir, other, "-n", "--allowed-rules", *RULES, "--", *targets)
    out = dry.stdout + dry.stderr
    assert [rule for rule, _ in dry_run_jobs(out)] == ["sanity"], out
