"""Entry functions of the rules cluster_sequences and probes (rules/probes.smk).

Each takes the rule's paths and config sections as plain values, so the workflow scripts stay
one call and a notebook can run a stage without Snakemake.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from plmdiff.config.schema import SELF_EMBEDDER, embeds_every_round
from plmdiff.core.errors import ConfigError
from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import resolve_device
from plmdiff.probes.baselines import baseline_features
from plmdiff.probes.clustering import Clusters, ClusterSettings, cluster_sequences, write_clusters
from plmdiff.probes.plots import plot_accuracy_per_layer, plot_confusion
from plmdiff.probes.probes import (
    ProbeResult,
    ProbeSettings,
    load_round_embeddings,
    probe_sweep,
    write_probe_tables,
)

log = logging.getLogger(__name__)


def check_round_embedder(embedder: str, stage: str) -> None:
    """Round separability means something only when one model embeds every round.

    With `self`, each round's own weights embed its own samples: a probe then tells the models
    apart (1.000 at layer 0 in the planted study), not the rounds' sequences.
    """
    if not embeds_every_round(embedder):
        raise ConfigError(
            f"{stage}: embedder '{SELF_EMBEDDER}' embeds each round with its own weights, so a "
            "round probe would separate the models, not the sequences; probes and sanity run "
            "only for embedders that embed every round (base or a model name)"
        )


def run_cluster_sequences(
    fasta: Sequence[str | Path], output: str | Path, probes_section: Mapping[str, Any], threads: int
) -> Clusters:
    """Cluster the sequences of every model's FASTA and write the table with its method."""
    entries = [entry for path in fasta for entry in read_fasta(path)]
    clusters = cluster_sequences(
        entries, ClusterSettings.from_section(probes_section), threads=threads
    )
    log.info("%d sequences in %d clusters (%s)", len(entries), clusters.n_clusters, clusters.method)
    write_clusters(clusters, output)
    return clusters


def run_probes(
    *,
    pooled: Sequence[str | Path],
    clusters: str | Path,
    fasta: Sequence[str | Path],
    outputs: Mapping[str, str | Path],
    probes_section: Mapping[str, Any],
    rounds: Sequence[str],
    embedder: str,
    pooling: str,
    device: str,
    threads: int,
) -> ProbeResult:
    """Probe every layer and every baseline; write the tables and figures.

    outputs: accuracy, folds, confusion (TSV), png, svg (accuracy per layer), confusion_png.
    """
    check_round_embedder(embedder, "probes")
    torch.set_num_threads(threads)
    data = load_round_embeddings(pooled, pooling, rounds, clusters=clusters, fasta=fasta)
    assert data.sequences is not None
    result = probe_sweep(
        data.X,
        data.y,
        data.groups,
        ProbeSettings.from_section(probes_section),
        baselines=baseline_features(data.sequences, data.X.get(0)),
        class_names=data.rounds,
        cluster_method=data.cluster_method,
        device=resolve_device(device),
    )
    write_probe_tables(result, outputs["accuracy"], outputs["folds"], outputs["confusion"])
    title = f"embedder {embedder}, {pooling} pooling"
    plot_accuracy_per_layer(result.accuracy, outputs["png"], outputs["svg"], title=title)
    plot_confusion(
        result.confusion, outputs["confusion_png"], title=f"{title}, layer {result.best_layer}"
    )
    return result
