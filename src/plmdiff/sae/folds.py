"""K-fold assignment of sequences, shared by SAE replicas and the diff stage.

Folds hold whole sequence clusters (MMseqs2, with the probes' clustering settings,
`plmdiff.probes.clustering`), so near-identical sequences never sit in a replica's training folds
and its held-out fold at once: a DPO round that collapses onto a few sequences would otherwise be
"held out" on twins of what the SAE trained on. Each model's sequences are clustered and folded on
their own (rule sae_folds, one table per model, `plmdiff.config.paths.sae_fold_table`): an SAE
replica holds out fold f of every model it is evaluated on, and adding a model must not reassign
the folds of the SAEs already trained (clusters over all models would, since a new model's
sequences merge old clusters). Every train_sae and feature_stats job reads the tables of its
models, so an SAE replica and the diff's held-out encoding can never disagree.

Clusters go, largest first (ties in a seeded hash order), to the fold that holds the fewest
sequences so far: folds are as equal as whole clusters allow. A sequence missing from the tables
(one that no model's FASTA holds, e.g. `sae.base.sequences`) is its own cluster and takes the
fold of a stable hash of its ID, the same in every job.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from plmdiff.config.paths import NULL_SCHEME
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import derive_seed
from plmdiff.core.tables import write_table
from plmdiff.probes.clustering import ClusterSettings, cluster_sequences

log = logging.getLogger(__name__)

FOLD_COLUMNS = ["seq_id", "cluster", "fold"]


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k = {k}: the number of folds must be >= 1")


def sequence_fold(seq_id: str, k: int, seed: int) -> int:
    """The fold (0..k-1) of a sequence that is its own cluster: a stable hash of its ID."""
    _check_k(k)
    return derive_seed(seed, "fold", seq_id) % k


def cluster_folds(cluster_of: Mapping[str, str], k: int, seed: int) -> dict[str, int]:
    """seq_id -> fold, every cluster whole in one fold, folds balanced in sequences."""
    _check_k(k)
    sizes = Counter(cluster_of.values())
    order = sorted(sizes, key=lambda c: (-sizes[c], derive_seed(seed, "fold", c), c))
    heap = [(0, f) for f in range(k)]
    fold_of_cluster: dict[str, int] = {}
    for cluster in order:
        held, fold = heapq.heappop(heap)
        fold_of_cluster[cluster] = fold
        heapq.heappush(heap, (held + sizes[cluster], fold))
    return {seq_id: fold_of_cluster[c] for seq_id, c in cluster_of.items()}


def write_fold_table(
    cluster_of: Mapping[str, str], path: str | os.PathLike, k: int, seed: int
) -> pd.DataFrame:
    """The sequences of `cluster_of` (seq_id -> cluster) with their fold, written to `path`."""
    fold_of = cluster_folds(cluster_of, k, seed)
    table = pd.DataFrame(
        {
            "seq_id": list(cluster_of),
            "cluster": list(cluster_of.values()),
            "fold": [fold_of[s] for s in cluster_of],
        }
    )
    write_table(table, path, float_format=None)
    sizes = table["fold"].value_counts().reindex(range(k), fill_value=0)
    log.info(
        "%d sequences in %d clusters over %d folds: %s sequences per fold",
        len(table),
        table["cluster"].nunique(),
        k,
        ", ".join(str(n) for n in sizes),
    )
    return table


def write_model_fold_table(
    fasta_path: str | os.PathLike,
    path: str | os.PathLike,
    probes_section: Mapping[str, Any],
    k: int,
    seed: int,
    threads: int = 1,
) -> pd.DataFrame:
    """The rule sae_folds: one model's FASTA clustered as the probes cluster, then folded."""
    entries = list(read_fasta(fasta_path))
    clusters = cluster_sequences(
        entries, ClusterSettings.from_section(probes_section), threads=threads
    )
    log.info("%s: %s", fasta_path, clusters.method)
    return write_fold_table(
        dict(zip(clusters.table["seq_id"], clusters.table["cluster"], strict=True)), path, k, seed
    )


def read_fold_table(
    paths: str | os.PathLike | Sequence[str | os.PathLike], k: int
) -> dict[str, int]:
    """seq_id -> fold, from the tables written by `write_fold_table` for `k` folds (one path or
    several: the tables of every model a job reads)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    fold_of: dict[str, int] = {}
    for one in paths:
        fold_of.update(_read_one_fold_table(Path(one), k))
    return fold_of


def _read_one_fold_table(path: Path, k: int) -> dict[str, int]:
    if not path.is_file():
        raise DataError(f"SAE fold table {path} does not exist (rule sae_folds)")
    table = pd.read_csv(path, sep="\t", dtype={"seq_id": str, "cluster": str})
    if list(table.columns) != FOLD_COLUMNS:
        raise DataError(f"SAE fold table {path} needs columns {', '.join(FOLD_COLUMNS)}")
    folds = table["fold"].astype(int)
    if len(table) and (folds.min() < 0 or folds.max() >= k):
        raise DataError(
            f"SAE fold table {path} holds folds outside 0..{k - 1} (sae.kfold = {k}); "
            "rerun sae_folds"
        )
    return dict(zip(table["seq_id"], folds, strict=True))


def fold_split(
    seq_ids: Sequence[str],
    k: int,
    seed: int,
    fold: int,
    fold_of: Mapping[str, int] | None = None,
) -> tuple[list[str], list[str]]:
    """(train IDs = every fold but `fold`, held-out IDs = fold `fold`), in input order.

    `fold_of` (`read_fold_table`) gives each sequence its cluster's fold; IDs it lacks, or all
    without it, are their own cluster (`sequence_fold`). k == 1 means no held-out data:
    (all IDs, []).
    """
    _check_k(k)
    if not 0 <= fold < k:
        raise ValueError(f"fold = {fold} is outside 0..{k - 1} (k = {k})")
    if k == 1:
        return list(seq_ids), []
    table = fold_of or {}
    missing = 0
    train: list[str] = []
    held_out: list[str] = []
    for seq_id in seq_ids:
        f = table.get(seq_id)
        if f is None:
            missing += 1
            f = sequence_fold(seq_id, k, seed)
        (held_out if f == fold else train).append(seq_id)
    if fold_of is not None and missing:
        log.info("%d sequences outside the fold table: each is its own cluster", missing)
    return train, held_out


def scheme_split(
    scheme: str,
    seq_ids: Sequence[str],
    k: int,
    seed: int,
    fold: int,
    fold_of: Mapping[str, int] | None = None,
) -> tuple[list[str], list[str]]:
    """(training IDs, evaluation IDs) of replica `fold` of an SAE scheme.

    Every scheme trains without fold `fold` and is evaluated on it, except the null fine-tune:
    it fine-tunes the base SAE of fold `fold` on the base model's sequences of fold `fold`,
    the only base tokens that SAE never saw. Like a round's fine-tune it then meets new tokens
    (of the base's distribution, so nothing changed); it is evaluated on the base's other folds.
    """
    train, held_out = fold_split(seq_ids, k, seed, fold, fold_of)
    if scheme == NULL_SCHEME and held_out:
        return held_out, train
    return train, held_out
