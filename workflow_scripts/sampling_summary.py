"""Rule sampling_summary: one table and one figure over all models' samples."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sampling.summary import write_sampling_summary

setup_logging(snakemake.log[0])
write_sampling_summary(
    snakemake.params.models,
    snakemake.input.stats,
    snakemake.input.fasta,
    snakemake.params.shards,
    snakemake.output.tsv,
    [snakemake.output.png, snakemake.output.svg],
)
