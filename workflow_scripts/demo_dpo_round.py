"""Rule demo_dpo_round: DPO round i of the demo, from checkpoint i-1, the base as reference."""

import torch

from plmdiff.core.runtime import setup_logging
from plmdiff.demo.job import run_dpo_round

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_dpo_round(
    snakemake.input.previous,
    snakemake.input.reference,
    snakemake.input.base_report,
    int(snakemake.wildcards.iteration),
    snakemake.output.checkpoint,
    snakemake.output.samples,
    snakemake.output.training,
    {**snakemake.config["demo"]["dpo"], **snakemake.params.dpo},
    snakemake.params.prompt,
    # Result-defining keys from params (the rerun triggers), the rest from the config.
    {**snakemake.config["sampling"], **snakemake.params.sampling},
    snakemake.config["device"],
)
