"""Rule model_diff_sequences: the shared sequences (plmdiff.model_diff.job.model_diff_sequences)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.model_diff.job import model_diff_sequences

setup_logging(snakemake.log[0])
model_diff_sequences(
    snakemake.input.base,
    snakemake.params.extra,
    {"max_sequences": snakemake.params.max_sequences},
    snakemake.output[0],
)
