"""Rule kl_summary: KL to the base per model and sequence set, and the KL-by-round figure."""

from plmdiff.core.runtime import setup_logging
from plmdiff.kl.job import run_kl_summary

setup_logging(snakemake.log[0])
run_kl_summary(
    list(snakemake.input.tables),
    list(snakemake.params.models),
    snakemake.output.tsv,
    [snakemake.output.png, snakemake.output.svg],
    snakemake.input.clusters,
)
