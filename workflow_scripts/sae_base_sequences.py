"""Rule sae_base_sequences: sae.base.sequences as a FASTA the extraction rules embed
(plmdiff.sae.job.prepare_base_sequences)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sae.job import prepare_base_sequences

setup_logging(snakemake.log[0])
prepare_base_sequences(list(snakemake.input.fasta), snakemake.output.fasta, snakemake.output.stats)
