"""Rule sanity: t-SNE, cosine, distance, variance and trend checks of one embedder."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sanity.job import run_sanity

setup_logging(snakemake.log[0])
run_sanity(
    pooled=snakemake.input.pooled,
    clusters=snakemake.input.clusters,
    outputs=dict(snakemake.output.items()),
    sanity_section=snakemake.params.sanity,
    rounds=snakemake.params.rounds,
    embedder=snakemake.wildcards.embedder,
    threads=snakemake.threads,
)
