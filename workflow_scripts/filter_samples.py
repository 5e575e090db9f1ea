"""Rule filter_samples: FASTA plus stats JSON of one model (plmdiff.sampling.job.filter_samples)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sampling.job import filter_samples

setup_logging(snakemake.log[0])
filter_samples(
    snakemake.wildcards.model,
    snakemake.input.samples,
    snakemake.params.filter,
    snakemake.params.base,
    snakemake.input.base_samples,
    snakemake.output.fasta,
    snakemake.output.stats,
)
