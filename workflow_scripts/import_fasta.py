"""Rule import_fasta: a model's own FASTA replaces its sampling (plmdiff.sampling.job)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sampling.job import import_fasta

setup_logging(snakemake.log[0])
import_fasta(snakemake.wildcards.model, list(snakemake.input.fasta), snakemake.output[0])
