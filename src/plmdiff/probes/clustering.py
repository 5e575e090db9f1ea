"""Sequence-identity clusters, so that probe folds never split near-identical sequences.

DPO rounds can collapse onto a few sequences that reappear, nearly unchanged, in several
rounds. A probe tested on a sequence whose near-twin it was trained on measures memory, not
a round signal. MMseqs2 `easy-cluster` groups sequences at `probes.cluster_identity`; without
the `mmseqs` binary only exact duplicates are grouped, and the log says so.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from plmdiff.core.errors import ConfigError, DataError
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.core.runtime import atomic_path

log = logging.getLogger(__name__)

METHODS = ("auto", "mmseqs", "exact")


@dataclass(frozen=True)
class ClusterSettings:
    """Clustering keys of the `probes` config section."""

    identity: float = 0.9
    coverage: float = 0.8
    method: str = "auto"  # auto: MMseqs2 when installed, else exact duplicates (logged)

    @classmethod
    def from_config(cls, probes_section: Mapping[str, Any]) -> ClusterSettings:
        settings = cls(
            identity=float(probes_section.get("cluster_identity", cls.identity)),
            coverage=float(probes_section.get("cluster_coverage", cls.coverage)),
            method=str(probes_section.get("cluster_method", cls.method)),
        )
        if settings.method not in METHODS:
            raise ConfigError(
                f"probes.cluster_method: '{settings.method}' is not accepted; "
                f"expected one of {', '.join(METHODS)}"
            )
        return settings


@dataclass
class Clusters:
    table: pd.DataFrame  # seq_id, cluster (the representative's seq_id), in input order
    method: str  # "mmseqs2 <version>" or "exact duplicates"

    @property
    def n_clusters(self) -> int:
        return int(self.table["cluster"].nunique())


def mmseqs_binary() -> str | None:
    return shutil.which("mmseqs")


def cluster_sequences(
    entries: Iterable[SequenceEntry],
    settings: ClusterSettings = ClusterSettings(),
    *,
    threads: int = 1,
) -> Clusters:
    """Cluster sequences by identity; every input seq_id appears exactly once in the table."""
    entries = list(entries)
    ids = [e.seq_id for e in entries]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"sequence id '{dup}' appears more than once in the FASTA inputs")
    if not entries:
        raise DataError("no sequences to cluster")
    binary = mmseqs_binary()
    if settings.method == "mmseqs" and binary is None:
        raise ConfigError(
            "probes.cluster_method: 'mmseqs' needs the mmseqs binary on PATH "
            "(Debian: apt install mmseqs2; conda: bioconda::mmseqs2); 'auto' falls back to "
            "exact duplicates"
        )
    if settings.method == "exact" or binary is None:
        if settings.method == "auto":
            log.warning(
                "mmseqs not found on PATH: grouping exact duplicates only, not sequences at "
                "%.0f%% identity (install mmseqs2 for identity clusters)",
                100 * settings.identity,
            )
        return Clusters(exact_duplicate_clusters(entries), "exact duplicates")
    return _mmseqs_clusters(entries, binary, settings, threads)


def exact_duplicate_clusters(entries: Iterable[SequenceEntry]) -> pd.DataFrame:
    """Identical sequences share a cluster, named after the first one's seq_id."""
    first: dict[str, str] = {}
    rows = []
    for e in entries:
        rep = first.setdefault(e.sequence.upper(), e.seq_id)
        rows.append((e.seq_id, rep))
    return pd.DataFrame(rows, columns=["seq_id", "cluster"])


def _mmseqs_version(binary: str) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown version"


def _mmseqs_clusters(
    entries: list[SequenceEntry], binary: str, settings: ClusterSettings, threads: int
) -> Clusters:
    version = _mmseqs_version(binary)
    with tempfile.TemporaryDirectory(prefix="plmdiff_mmseqs_") as tmp:
        work = Path(tmp)
        fasta = work / "input.fasta"
        write_fasta(fasta, [SequenceEntry(e.seq_id, e.sequence) for e in entries])
        cmd = [
            binary,
            "easy-cluster",
            str(fasta),
            str(work / "out"),
            str(work / "tmp"),
            "--min-seq-id",
            str(settings.identity),
            "-c",
            str(settings.coverage),
            "--threads",
            str(threads),
            "-v",
            "1",
        ]
        log.info("clustering %d sequences: %s (mmseqs %s)", len(entries), " ".join(cmd), version)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DataError(
                f"mmseqs easy-cluster failed (exit {proc.returncode}): "
                + (proc.stderr or proc.stdout).strip().replace("\n", " ")[-500:]
            )
        pairs = pd.read_csv(
            work / "out_cluster.tsv", sep="\t", header=None, names=["cluster", "seq_id"]
        )
    cluster_of = dict(zip(pairs["seq_id"], pairs["cluster"], strict=True))
    missing = [e.seq_id for e in entries if e.seq_id not in cluster_of]
    if missing:
        raise DataError(
            f"mmseqs easy-cluster left {len(missing)} sequence(s) unassigned, e.g. {missing[0]}"
        )
    table = pd.DataFrame(
        {"seq_id": [e.seq_id for e in entries], "cluster": [cluster_of[e.seq_id] for e in entries]}
    )
    return Clusters(table, f"mmseqs2 {version}")


def write_clusters(clusters: Clusters, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        clusters.table.to_csv(tmp, sep="\t", index=False)


def read_clusters(path: str | Path) -> dict[str, str]:
    """seq_id -> cluster."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cluster table {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str)
    if list(table.columns[:2]) != ["seq_id", "cluster"]:
        raise DataError(f"cluster table {path} needs columns seq_id, cluster")
    return dict(zip(table["seq_id"], table["cluster"], strict=True))


def groups_for(seq_ids: Iterable[str], cluster_of: Mapping[str, str], source: str) -> list[str]:
    """The cluster of each seq_id; an id without one is a stale cluster table."""
    out = []
    for seq_id in seq_ids:
        try:
            out.append(cluster_of[seq_id])
        except KeyError:
            raise DataError(
                f"sequence '{seq_id}' has no cluster in {source}; rerun cluster_sequences"
            ) from None
    return out
