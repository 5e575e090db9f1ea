"""Rule gather_pooled: one pooled table per (embedder, model) (plmdiff.activations.job.gather_pooled)."""

from plmdiff.activations.job import gather_pooled
from plmdiff.core.runtime import setup_logging

setup_logging(snakemake.log[0])
gather_pooled(list(snakemake.input), snakemake.output[0])
