"""Rule sampling_summary: one table and one figure (plmdiff.sampling.job.sampling_summary)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sampling.job import sampling_summary

setup_logging(snakemake.log[0])
sampling_summary(
    snakemake.params.models,
    snakemake.input.stats,
    snakemake.input.fasta,
    snakemake.params.shards,
    snakemake.output.tsv,
    [snakemake.output.png, snakemake.output.svg],
)
