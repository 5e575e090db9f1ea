"""Rule sanity: t-SNE, cosine, variance and trend checks of one embedder's pooled embeddings."""

import torch

from plmdiff.activations.readers import pooled_layers
from plmdiff.core.runtime import setup_logging
from plmdiff.probes.plots import plot_cosine_grid, plot_sanity_stats, plot_tsne_grid
from plmdiff.probes.probes import load_round_embeddings
from plmdiff.sanity.checks import SanitySettings, sanity_checks, write_sanity_tables

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
out, pooled = snakemake.output, snakemake.input.pooled
settings = SanitySettings.from_config(snakemake.params.sanity)
layers = settings.select_layers(pooled_layers(pooled[0]), pooled[0])
data = load_round_embeddings(pooled, settings.pooling, snakemake.params.rounds, layers=layers)
result = sanity_checks(data.X, data.y, data.rounds, settings)
write_sanity_tables(result, out.variance, out.trend, out.cosine)
title = f"embedder {snakemake.wildcards.embedder}, {settings.pooling} pooling"
plot_tsne_grid(result.tsne, data.y[result.tsne_rows], data.rounds, out.tsne, title=title)
plot_cosine_grid(result.cosine, data.rounds, out.cosine_png)
plot_sanity_stats(result.variance, result.trend, out.stats_png)
