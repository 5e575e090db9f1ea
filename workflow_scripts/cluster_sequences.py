"""Rule cluster_sequences: sequence-identity clusters of every model's FASTA."""

from plmdiff.core.runtime import setup_logging
from plmdiff.probes.job import run_cluster_sequences

setup_logging(snakemake.log[0])
run_cluster_sequences(
    snakemake.input, snakemake.output[0], snakemake.params.probes, threads=snakemake.threads
)
