"""Rule demo_train_base: the demo's base model (iteration 0) and its report."""

import torch

from plmdiff.core.runtime import setup_logging
from plmdiff.demo.job import run_train_base

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_train_base(
    snakemake.input.family,
    snakemake.output.checkpoint,
    snakemake.output.report,
    snakemake.params.base,
    snakemake.params.seed,
    snakemake.params.prompt,
    # Result-defining keys from params (the rerun triggers), the rest from the config.
    {**snakemake.config["sampling"], **snakemake.params.sampling},
    snakemake.config["device"],
)
