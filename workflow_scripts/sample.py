"""Rule sample: draw one shard of a model's sequences (every output, truncated ones included)."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sampling.generate import sample_shard, write_samples

setup_logging(snakemake.log[0])
table = sample_shard(
    snakemake.input.record,
    snakemake.wildcards.model,
    int(snakemake.wildcards.shard),
    # Result-defining keys from params (the rerun triggers), the batch size from the config.
    {**snakemake.config["sampling"], **snakemake.params.sampling},
    snakemake.params.prompt,
    device=snakemake.config["device"],
    allow_pickle=snakemake.config["allow_pickle"],
    threads=snakemake.threads,
)
write_samples(snakemake.output[0], table)
