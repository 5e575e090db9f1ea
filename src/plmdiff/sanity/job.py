"""Entry function of the rule sanity (rules/probes.smk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from plmdiff.activations.readers import pooled_layers
from plmdiff.probes.job import check_round_embedder
from plmdiff.probes.plots import plot_cosine_grid, plot_sanity_stats, plot_tsne_grid
from plmdiff.probes.probes import load_round_embeddings
from plmdiff.sanity.checks import (
    SanityResult,
    SanitySettings,
    sanity_checks,
    write_sanity_tables,
)


def run_sanity(
    *,
    pooled: Sequence[str | Path],
    clusters: str | Path,
    outputs: Mapping[str, str | Path],
    sanity_section: Mapping[str, Any],
    rounds: Sequence[str],
    embedder: str,
    threads: int,
) -> SanityResult:
    """Every sanity check of one embedder; outputs: variance, trend, cosine, tsne, cosine_png,
    stats_png."""
    check_round_embedder(embedder, "sanity")
    torch.set_num_threads(threads)
    settings = SanitySettings.from_section(sanity_section)
    layers = settings.select_layers(pooled_layers(pooled[0]), str(pooled[0]))
    data = load_round_embeddings(pooled, settings.pooling, rounds, layers=layers, clusters=clusters)
    result = sanity_checks(
        data.X,
        data.y,
        data.rounds,
        settings,
        groups=data.groups,
        cluster_method=data.cluster_method,
    )
    write_sanity_tables(result, outputs["variance"], outputs["trend"], outputs["cosine"])
    title = f"embedder {embedder}, {settings.pooling} pooling"
    plot_tsne_grid(result.tsne, data.y[result.tsne_rows], data.rounds, outputs["tsne"], title=title)
    plot_cosine_grid(result.cosine, data.rounds, outputs["cosine_png"])
    plot_sanity_stats(result.variance, result.trend, outputs["stats_png"])
    return result
