"""Rule kl: per-token KL(model || base) on the model's own and the base's samples."""

from plmdiff.core.runtime import setup_logging
from plmdiff.kl.divergence import BASE_SET, OWN
from plmdiff.kl.job import run_kl

setup_logging(snakemake.log[0])
params = snakemake.params
run_kl(
    snakemake.wildcards.model,
    params.checkpoint,
    params.base,
    params.base_checkpoint,
    {OWN: snakemake.input.own, BASE_SET: snakemake.input.base},
    snakemake.input.record,
    prompt=params.prompt,
    kl_section=params.kl,
    device=snakemake.config["device"],
    allow_pickle=snakemake.config["allow_pickle"],
    table_path=snakemake.output.table,
    top_path=snakemake.output.top,
)
