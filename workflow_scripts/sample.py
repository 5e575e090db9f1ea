"""Rule sample: draw one shard of a model's sequences (plmdiff.sampling.job.sample)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sampling.job import sample

setup_logging(snakemake.log[0])
sample(
    snakemake.input.record,
    snakemake.wildcards.model,
    int(snakemake.wildcards.shard),
    # Result-defining keys from params (the rerun triggers), the batch size from the config.
    {**snakemake.config["sampling"], **snakemake.params.sampling},
    snakemake.params.prompt,
    snakemake.output[0],
    device=snakemake.config["device"],
    allow_pickle=snakemake.config["allow_pickle"],
    threads=snakemake.threads,
)
