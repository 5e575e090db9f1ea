"""Rule demo_summary: reward, proxy and length of fresh samples of every demo round."""

import torch

from plmdiff.core.runtime import setup_logging
from plmdiff.demo.job import run_summary

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_summary(
    snakemake.input.checkpoints,
    snakemake.input.base_report,
    snakemake.output.tsv,
    snakemake.output.png,
    snakemake.output.samples,
    snakemake.params.dpo,
    snakemake.params.prompt,
    # Result-defining keys from params (the rerun triggers), the rest from the config.
    {**snakemake.config["sampling"], **snakemake.params.sampling},
    snakemake.config["device"],
)
