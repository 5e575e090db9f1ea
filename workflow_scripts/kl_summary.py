"""Rule kl_summary: KL to the base per model and sequence set, and the KL-by-round figure."""

from plmdiff.kl import run_kl_summary
from plmdiff.runtime import setup_logging

setup_logging(snakemake.log[0])
run_kl_summary(
    list(snakemake.input),
    list(snakemake.params.models),
    snakemake.output.tsv,
    [snakemake.output.png, snakemake.output.svg],
)
