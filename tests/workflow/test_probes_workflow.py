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
from plmdiff.probes.probes import ACCURACY_COLUMNS
from plmdiff.testing.checkpoints import family_sequences, make_tiny_checkpoint
from tests.conftest import run_snakemake, tiny_config, write_config

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
    run_snakemake(workdir, configfile, "--cores", "2", "--allowed-rules", *RULES, "--", *targets)
    return workdir, configfile, fastas, targets


def test_clusters_cover_every_sequence_and_group_the_shared_one(probes_run):
    workdir, _, fastas, _ = probes_run
    table = pd.read_csv(workdir / "results" / "clusters" / "clusters.tsv", sep="\t")
    ids = [e.seq_id for entries in fastas.values() for e in entries]
    assert sorted(table.seq_id) == sorted(ids)
    cluster = dict(zip(table.seq_id, table.cluster, strict=True))
    assert len({cluster[f"{m}_001_00000"] for m in MODELS}) == 1
    log = (workdir / "logs" / "cluster_sequences.log").read_text()
    method = "mmseqs2" if mmseqs_binary() else "exact duplicates"
    assert re.search(rf"{3 * PER_MODEL} sequences in \d+ clusters \({method}", log)


def test_probe_tables_and_figures(probes_run):
    workdir = probes_run[0]
    for pooling in ("last", "mean"):
        out = workdir / "results" / "probes" / "r0" / pooling
        table = pd.read_csv(out / "accuracy.tsv", sep="\t")
        assert list(table.columns) == ACCURACY_COLUMNS
        assert table.layer.tolist() == [0, 1, 2]
        np.testing.assert_allclose(table.chance, 1 / 3, atol=1e-6)
        for column in ("mean_accuracy", "mean_accuracy_ungrouped", "permutation_mean"):
            assert table[column].between(0, 1).all()
        assert table.permutation_p.isin([0.25, 0.5, 0.75, 1.0]).all()
        assert set(table.C) <= {0.1, 1.0}
        assert (table.n_sequences == 3 * PER_MODEL).all()
        assert (table.n_clusters <= 3 * PER_MODEL - 2).all()
        confusion = pd.read_csv(out / "confusion.tsv", sep="\t", index_col=0)
        assert list(confusion.index) == list(MODELS) == list(confusion.columns)
        assert confusion.to_numpy().sum() == 3 * PER_MODEL
        folds = pd.read_csv(out / "folds.tsv", sep="\t")
        assert set(folds.scheme) == {"grouped", "ungrouped", "permutation"}
        assert len(folds) == 3 * 3 * (2 + 3)  # layers x folds x (2 schemes + 3 permutations)
        for name in ("acc_per_layer.png", "confusion.png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (out / "acc_per_layer.svg").read_text()
        assert "device: cpu" in (workdir / "logs" / "probes" / "r0" / f"{pooling}.log").read_text()


def test_sanity_tables_and_figures(probes_run):
    out = probes_run[0] / "results" / "sanity" / "r0"
    variance = pd.read_csv(out / "variance.tsv", sep="\t")
    assert variance.layer.tolist() == [0, 1, 2]
    assert (variance.variance_ratio > 0).all() and variance.permutation_p.between(0.05, 1).all()
    trend = pd.read_csv(out / "trend.tsv", sep="\t")
    assert trend.exact.all() and (trend.permutations == 6).all()
    cosine = pd.read_csv(out / "cosine.tsv", sep="\t")
    assert len(cosine) == 3 * 9
    np.testing.assert_allclose(cosine[cosine.round_i == cosine.round_j].cosine, 1.0, atol=1e-6)
    for name in ("tsne_last_token_grid.png", "cosine_grid.png", "stats_per_layer.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_a_no_op_and_a_sanity_setting_reruns_only_sanity(probes_run):
    workdir, configfile, _, targets = probes_run
    dry = run_snakemake(workdir, configfile, "-n", "--allowed-rules", *RULES, "--", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    config = yaml.safe_load(configfile.read_text())
    config["sanity"]["permutations"] = 29
    other = write_config(workdir / "config_changed.yaml", config)
    dry = run_snakemake(workdir, other, "-n", "--allowed-rules", *RULES, "--", *targets)
    out = dry.stdout + dry.stderr
    assert "Sanity checks of the pooled embeddings of embedder r0" in out
    assert "Probing every layer" not in out and "Clustering" not in out
