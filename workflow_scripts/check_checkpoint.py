"""Rule check_checkpoint: verify a checkpoint and record its fingerprint (plmdiff.models.job)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.models.job import check_checkpoint

setup_logging(snakemake.log[0])
check_checkpoint(
    snakemake.params.checkpoint,
    snakemake.wildcards.model,
    snakemake.params.prompt,
    snakemake.output[0],
    allow_pickle=snakemake.config["allow_pickle"],
)
